"""`comical images import` on NIfTI files that nibabel writes itself: the round trip, every bad file a user's
download can hold (each reported, none stopping the rest), resampling, the atlas, and resuming."""

import gzip
import json

import nibabel
import numpy as np
import polars as pl
import pytest

from comical.cli import main
from comical.data_io.images import open_image_store
from comical.data_io.nifti import NORMALISE_PERCENTILE

SHAPE = (9, 11, 8)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _volume(rng):
    data = rng.gamma(4.0, 50.0, SHAPE)
    data[0] = 0.0  # background
    data[4, 5, 4] = 1e5  # one bright outlier voxel: normalisation must not let it crush the rest
    return data


@pytest.fixture
def downloads(tmp_path):
    """Eight subjects as a UK Biobank download would hold them: five good, and one each of a 4-D file, a NaN
    volume, a wrong affine, a truncated .gz; subject 9 has no file at all."""
    rng = np.random.default_rng(0)
    volumes = {}
    for eid in range(1, 10):
        folder = tmp_path / "data" / str(eid)
        folder.mkdir(parents=True)
        data, affine = _volume(rng), AFFINE
        if eid == 6:
            data = np.stack([data, data], axis=-1)
        if eid == 7:
            data[2, 2, 2] = np.nan
        if eid == 8:
            affine = np.diag([3.0, 3.0, 3.0, 1.0])
        if eid == 9:
            continue
        path = folder / "T1.nii.gz"
        nibabel.save(nibabel.Nifti1Image(data.astype(np.float32), affine), path)
        volumes[eid] = data
    truncated = tmp_path / "data" / "5" / "T1.nii.gz"
    truncated.write_bytes(truncated.read_bytes()[:len(truncated.read_bytes()) // 2])
    subjects = tmp_path / "subjects.txt"
    subjects.write_text("\n".join(str(e) for e in range(1, 10)) + "\n")
    return tmp_path, volumes, subjects


def test_import_round_trips_good_volumes_and_reports_every_bad_one(downloads, ray_session, capsys):
    root, volumes, subjects = downloads
    out = root / "cohort" / "images"
    assert main(["images", "import", "--t1", str(root / "data" / "{eid}" / "T1.nii.gz"), "--subjects",
                 str(subjects), "--out", str(out)]) == 0
    store = open_image_store(out)
    assert store.eids.tolist() == [1, 2, 3, 4] and store.shape == SHAPE
    np.testing.assert_allclose(store.manifest["affine"], AFFINE)
    decoded, eids = store.read("t1")
    report = pl.read_csv(out / "import_report.tsv", separator="\t", null_values="NA")
    for volume, eid in zip(decoded, eids):
        original = np.asarray(nibabel.load(root / "data" / str(eid) / "T1.nii.gz").get_fdata())
        divisor = np.percentile(original[original > 0], NORMALISE_PERCENTILE)
        assert report.filter(pl.col("eid") == eid)["divisor"][0] == pytest.approx(divisor)
        # equal to get_fdata() within the stored precision (uint8 of [0, 1]), below the clipped outlier
        np.testing.assert_allclose(volume * divisor, np.clip(original, 0, divisor), atol=divisor / 255 / 2 * 1.01)
        assert (volume[1:] > 0.1).mean() > 0.5  # the outlier voxel did not crush the rest
    status = dict(zip(report["eid"], report["status"]))
    reason = dict(zip(report["eid"], report["reason"]))
    assert status == {1: "imported", 2: "imported", 3: "imported", 4: "imported", 5: "refused", 6: "refused",
                      7: "refused", 8: "refused", 9: "missing"}
    assert "unreadable" in reason[5] and "4-D" in reason[6] and "non-finite" in reason[7]
    assert "--voxel-mm" in reason[8]
    line = capsys.readouterr().out
    assert "4 of 9 subjects stored" in line and "missing file 1" in line and "refused one 4" in line
    assert not (out / ".import").exists()
    assert main(["images", "import", "--t1", str(root / "data" / "{eid}" / "T1.nii.gz"), "--subjects",
                 str(subjects), "--out", str(out)]) == 2  # a finished store is never overwritten
    assert "already an image store" in capsys.readouterr().err


def test_voxel_mm_resamples_every_volume_and_the_atlas_keeps_its_labels(downloads, ray_session):
    root, volumes, subjects = downloads
    labels = np.zeros(SHAPE, np.int16)
    labels[:, :5], labels[:, 5:] = 1, 2
    nibabel.save(nibabel.Nifti1Image(labels, AFFINE), root / "atlas.nii.gz")
    pl.DataFrame({"label": [1, 2], "idp": ["left", "right"]}).write_csv(root / "labels.csv")
    out = root / "resampled"
    assert main(["images", "import", "--t1", str(root / "data" / "{eid}" / "T1.nii.gz"), "--subjects",
                 str(subjects), "--voxel-mm", "4", "--atlas", str(root / "atlas.nii.gz"), "--atlas-labels",
                 str(root / "labels.csv"), "--out", str(out)]) == 0
    store = open_image_store(out)
    assert 8 in store.eids.tolist()  # the 3 mm volume, resampled to the common 4 mm grid
    assert store.manifest["voxel_mm"] == pytest.approx(4.0)
    atlas = np.asarray(nibabel.load(out / "atlas.nii.gz").dataobj)
    assert atlas.shape == store.shape and set(np.unique(atlas)) <= {-1, 0, 1, 2} and {1, 2} <= set(np.unique(atlas))
    assert pl.read_csv(out / "atlas_labels.csv")["idp"].to_list() == ["left", "right"]


def test_bad_atlas_and_unknown_labels_stop_before_any_volume_is_imported(downloads, ray_session, capsys):
    root, _, subjects = downloads
    labels = np.zeros(SHAPE, np.int16)
    labels[:, :5] = 3
    nibabel.save(nibabel.Nifti1Image(labels, AFFINE), root / "atlas.nii.gz")
    pl.DataFrame({"label": [1], "idp": ["left"]}).write_csv(root / "labels.csv")
    out = root / "images"
    args = ["images", "import", "--t1", str(root / "data" / "{eid}" / "T1.nii.gz"), "--subjects", str(subjects),
            "--atlas", str(root / "atlas.nii.gz"), "--atlas-labels", str(root / "labels.csv"), "--out", str(out)]
    assert main(args) == 2
    assert "label 3 is not in" in capsys.readouterr().err
    assert not out.exists() or not list(out.glob("*.parquet"))


def test_a_stopped_import_resumes_with_the_chunks_not_yet_done(downloads, ray_session, monkeypatch, capsys):
    from comical.pipelines import image_import

    root, _, subjects = downloads
    out = root / "images"
    monkeypatch.setattr(image_import, "SHARD_ROWS", 3)  # three chunks of three subjects
    args = ["images", "import", "--t1", str(root / "data" / "{eid}" / "T1.nii.gz"), "--subjects", str(subjects),
            "--out", str(out)]
    real = image_import._import_chunk
    monkeypatch.setattr(image_import, "_import_chunk",
                        lambda index, *a: real(index, *a) if index == 0 else (_ for _ in ()).throw(OSError("stopped")))
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "2 of 3 chunks failed" in err and "stopped" in err and "run the same command again" in err
    assert (out / ".import" / "chunk-00000.json").is_file() and not (out / "manifest.json").exists()
    first = (out / "part-00000.parquet").stat().st_mtime_ns
    monkeypatch.setattr(image_import, "_import_chunk", real)
    assert main(args) == 0
    assert "resuming, 1 of 3 chunks already done" in capsys.readouterr().out
    assert (out / "part-00000.parquet").stat().st_mtime_ns == first  # chunk 0 was not imported again
    assert open_image_store(out).eids.tolist() == [1, 2, 3, 4]
    assert json.loads((out / "manifest.json").read_text())["n_subjects"] == 4
