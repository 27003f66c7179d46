"""GEMCONT (paper 001): its inputs from a cohort with images, the model's pieces, and a run through the engine."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import polars.selectors as cs
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score

from comical.cli import main
from comical.data_io.plink import open_genotypes
from comical.distributed.tasks.gemcont import GemcontConfig, GemcontModel, scarf
from comical.pipelines.statgen.clump import r_squared
from comical.pipelines.gemcont.evaluate import METRICS, _embedding_gwas


@pytest.fixture(scope="session")
def gemcont_inputs(image_cohort, tmp_path_factory):
    from comical.pipelines.gemcont.inputs import prepare_gemcont_inputs

    out = tmp_path_factory.mktemp("gemcont") / "inputs"
    prepare_gemcont_inputs(image_cohort, out, disease="AD")
    return out


def test_inputs_panel_splits_and_genotype_features(gemcont_inputs, image_cohort):
    manifest = json.loads((gemcont_inputs / "manifest.json").read_text())
    panel = pl.read_csv(gemcont_inputs / "panel.tsv", separator="\t")
    table = pl.read_parquet(gemcont_inputs / "genotypes.parquet")
    assert manifest["splits"] == {"train": 1400, "val": 300, "test": 300}
    assert table["eid"].n_unique() == 2000 and table.group_by("split").len().sort("split")["len"].to_list() == [300, 1400, 300]
    # effects: the catalog's log odds ratio, signed for the counted allele
    catalog = pl.read_csv(image_cohort / "gwas_catalog.tsv", separator="\t", infer_schema=False)
    row = catalog.filter(pl.col("SNPS") == panel["variant_id"][0]).row(0, named=True)
    risk = row["STRONGEST SNP-RISK ALLELE"].split("-")[-1]
    sign = 1 if risk == panel["effect_allele"][0] else -1 if risk == panel["other_allele"][0] else 0
    assert panel["effect"][0] == pytest.approx(sign * np.log(float(row["OR or BETA"])))
    # clumped on the training subjects: no two panel variants within 5 Mb at r^2 >= 0.05
    genotypes = open_genotypes(image_cohort / "genotypes")
    index = {v: i for i, v in enumerate(genotypes.variants["variant_id"])}
    train = np.isin(genotypes.samples["iid"].cast(pl.Int64).to_numpy(),
                    table.filter(pl.col("split") == "train")["eid"].to_numpy())
    g = genotypes.read(samples=np.flatnonzero(train), variants=[index[v] for v in panel["variant_id"]],
                       dtype=np.float64)
    chrom, pos = panel["chromosome"].to_numpy(), panel["base_pair_location"].to_numpy()
    for a in range(panel.height):
        near = np.flatnonzero((chrom == chrom[a]) & (np.abs(pos - pos[a]) <= 5_000_000) & (np.arange(panel.height) != a))
        assert (r_squared(g[:, a], g[:, near]) < 0.05).all()
    # the features, rebuilt here: training-subject means fill missing calls, the top 20 PCs (with an intercept) are
    # regressed out with coefficients fitted on the training subjects, and each feature is standardised there
    features = np.stack(table["g"].to_numpy())
    covariates = table.select("eid").join(pl.read_csv(image_cohort / "covariates.csv"), on="eid", how="left")
    pcs = covariates.select(*[f"PC{i}" for i in range(1, 21)]).to_numpy()
    fit = (table["split"] == "train").to_numpy()
    rows = [int(np.flatnonzero(genotypes.samples["iid"].cast(pl.Int64).to_numpy() == e)[0]) for e in table["eid"]]
    raw = genotypes.read(samples=rows, variants=[index[v] for v in panel["variant_id"]], dtype=np.float64)
    raw = np.where(np.isnan(raw), np.nanmean(raw[fit], axis=0), raw)
    design = np.column_stack([np.ones(len(raw)), pcs])
    residual = raw - design @ np.linalg.lstsq(design[fit], raw[fit], rcond=None)[0]
    expected = residual / residual[fit].std(0)
    np.testing.assert_allclose(features, expected, atol=1e-4)
    everyone = raw - design @ np.linalg.lstsq(design, raw, rcond=None)[0]  # a fit that saw the test subjects
    assert not np.allclose(features, everyone / everyone[fit].std(0), atol=1e-3)
    # the planted image latent is a linear function of the panel's genotypes: what the projector can learn
    from comical.distributed.metrics import ridge_r2

    latent = table.select("eid").join(pl.read_parquet(image_cohort / "truth" / "image_latent.parquet"), on="eid")
    assert ridge_r2(features, latent["latent"].to_numpy()) > 0.8


def test_prepare_looks_up_each_image_rows_genotypes(gemcont_inputs):
    """A worker's batch of image rows gets the genotype features of the same subjects, whatever their order."""
    from comical.data_io.errors import InputError
    from comical.distributed.tasks.gemcont import GemcontTask

    manifest = json.loads((gemcont_inputs / "manifest.json").read_text())
    table = pl.read_parquet(gemcont_inputs / "genotypes.parquet")
    task = GemcontTask().bind({"data": str(gemcont_inputs), "modality": "t1", "image_shape": manifest["image_shape"]})
    pick = [17, 3, 1999, 0]
    size = int(np.prod(manifest["image_shape"]))
    batch = {"eid": torch.tensor(table["eid"].to_numpy()[pick]), "t1": torch.full((4, size), 10, dtype=torch.uint8),
             "t1_scale": torch.tensor([0.5, 1.0, 1.0, 2.0])}
    prepared = task.prepare(batch, torch.float32)
    assert torch.equal(prepared["g"], torch.from_numpy(np.stack(table["g"].to_numpy()[pick]).astype(np.float32)))
    assert prepared["image"].shape == (4, 1, *manifest["image_shape"]) and prepared["image"][3].max() == 20
    batch["eid"][1] = 1  # no such subject
    with pytest.raises(InputError, match="eid 1"):
        task.prepare(batch, torch.float32)


def test_gemcont_validation_in_chunks_scores_what_one_forward_scores(gemcont_inputs):
    """GEMCONT's validation forward runs 64 volumes at a time and joins image and genotype embeddings (the logit
    scale is one): the loss and top-1 over batches of 100 subjects equal a single forward's."""
    from comical.distributed.config import TrainConfig
    from comical.distributed.tasks.gemcont import GemcontTask
    from comical.distributed.train import evaluate
    from conftest import ValidationShard

    manifest = json.loads((gemcont_inputs / "manifest.json").read_text())
    table = pl.read_parquet(gemcont_inputs / "genotypes.parquet")
    shape = manifest["image_shape"]
    task = GemcontTask().bind({"data": str(gemcont_inputs), "modality": "t1", "image_shape": shape})
    torch.manual_seed(0)
    model = GemcontModel(GemcontConfig(), [0.1] * len(table["g"][0]), tuple(shape)).eval()
    g = torch.Generator().manual_seed(1)
    shard = ValidationShard({"eid": torch.tensor(table["eid"].to_numpy()[:150]),
                    "t1": torch.randint(0, 255, (150, int(np.prod(shape))), generator=g, dtype=torch.uint8),
                    "t1_scale": torch.full((150,), 0.01)})
    config = TrainConfig.from_dict({"task": "gemcont", "eval_batch_size": 100})
    chunked = evaluate(model, task, shard, config)
    task.eval_chunk = None
    whole = evaluate(model, task, shard, config)
    assert chunked.keys() == whole.keys() and chunked["n_pairs"] == 150
    for key in whole:
        assert chunked[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-6), key


def test_projector_starts_at_the_effects_and_scarf_corrupts_its_fraction():
    effects = [0.3, -0.1, 0.0, 0.2]
    model = GemcontModel(GemcontConfig(), effects, (16, 16, 16))
    assert torch.equal(model.variant_weights.detach(), torch.tensor(effects))
    torch.manual_seed(0)
    g = torch.randn(2000, 50)
    corrupted = scarf(g, 0.1)
    changed = corrupted != g
    assert 0.09 < changed.float().mean() < 0.11
    for column in (0, 17, 49):  # replacements come from the same feature of other subjects
        assert torch.isin(corrupted[changed[:, column], column], g[:, column]).all()
    assert torch.equal(scarf(g, 0.0), g)


def test_the_prs_baseline_puts_one_fixed_weighted_score_through_the_projector():
    effects = [0.3, -0.1, 0.0, 0.2]
    model = GemcontModel(GemcontConfig(genotype_input="prs"), effects, (16, 16, 16))
    assert "variant_weights" not in dict(model.named_parameters())  # fixed, not trained
    g = torch.randn(5, 4)
    prs = g @ torch.tensor(effects)
    expected = torch.nn.functional.normalize(model.genotype_projector(prs[:, None]), dim=-1)
    assert torch.allclose(model.encode_genotypes(g), expected)


@pytest.mark.slow
def test_gemcont_learns_the_planted_latent_through_the_engine(image_cohort, tmp_path, capsys, in_process):
    """The engine's worker loop with DeepSpeed streams the volumes from Ray Data (one worker, in this process); the
    run writes its model, test metrics beside their baselines, and the test subjects' embeddings. Trained for 8
    epochs, its image embeddings carry the planted latent (ridge R^2 on the 300 test subjects) where an untrained
    encoder's do not."""
    out = tmp_path / "run"
    assert main(["train", "--task", "gemcont", "--cohort", str(image_cohort), "--disease", "AD", "--out", str(out),
                 "--epochs", "8"]) == 0  # the task's batch: 128
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["n_test"] == 300 and metrics["top1_accuracy_chance"] == pytest.approx(1 / 300)
    # on 300 subjects a ridge R^2 of no signal is about 0 +- 0.02; two workers and 12 epochs gave 0.13 and 0.23
    # (seeds 0, 1), one worker in process and 8 epochs 0.19 (seed 0)
    assert metrics["latent_r2_untrained_encoder"] < 0.05 and metrics["latent_r2"] > 0.05
    assert metrics["latent_r2_raw_voxels"] > 0.1  # the latent is in the volumes (0.21-0.25 seen at 12 mm)
    embeddings = pl.read_parquet(out / "test_embeddings.parquet")
    assert embeddings.height == 300 and "image_127" in embeddings.columns and "genotype_127" in embeddings.columns
    assert (out / "model" / "model.safetensors").is_file() and (out / "inputs" / "panel.tsv").is_file()
    assert "planted image latent R^2" in capsys.readouterr().out

    # comical embed: every subject of the inputs with its split; the test rows equal what training wrote
    assert main(["embed", "--run", str(out), "--cohort", str(image_cohort), "--out", str(tmp_path / "e.parquet")]) == 0
    every = pl.read_parquet(tmp_path / "e.parquet")
    assert every.height == 2000 and every["split"].value_counts().sort("split")["count"].to_list() == [300, 1400, 300]
    test = every.filter(pl.col("split") == "test").drop("split").sort("eid")
    np.testing.assert_allclose(test.drop("eid").to_numpy(), embeddings.sort("eid").drop("eid").to_numpy(), atol=1e-5)
    # ... and refuses another image store: its genotype features were fitted to this cohort
    other = tmp_path / "other"
    shutil.copytree(image_cohort, other)
    manifest = json.loads((other / "images" / "manifest.json").read_text())
    (other / "images" / "manifest.json").write_text(json.dumps(manifest | {"voxel_mm": 11.0}))
    capsys.readouterr()
    assert main(["embed", "--run", str(out), "--cohort", str(other), "--out", str(tmp_path / "o.parquet")]) == 2
    assert "not the one run" in capsys.readouterr().err and not (tmp_path / "o.parquet").exists()

    # comical predict from the frozen image encoder: GEMCONT's own split, the IDPs as the raw baseline
    capsys.readouterr()
    assert main(["predict", "--run", str(out), "--cohort", str(image_cohort), "--outcomes", "AD", "--epochs", "2",
                 "--out", str(tmp_path / "predict")]) == 0
    assert "the GEMCONT image embedding (128 values)" in capsys.readouterr().out
    roles = pl.read_parquet(tmp_path / "predict" / "subjects.parquet")
    assert set(roles.filter(pl.col("heads") == "test")["eid"].cast(pl.Int64)) == set(test["eid"].cast(pl.Int64))
    assert 0 < pl.read_csv(tmp_path / "predict" / "auc.csv")["auc_embedding"][0] < 1

    # comical evaluate gemcont: each metric beside the random encoder's; the PRS AUC from the panel's effects
    assert main(["evaluate", "gemcont", "--run", str(out), "--cohort", str(image_cohort),
                 "--out", str(tmp_path / "eval")]) == 0
    summary = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert summary["n_test"] == 300 and set(summary["methods"]) >= {"gemcont", "random_encoder", "prs", "raw_voxels"}
    for method in ("gemcont", "random_encoder"):  # 300 subjects: little power, so close to calibrated
        assert 0.8 < summary["methods"][method]["lambda_gc"] < 1.3
    assert summary["methods"]["gemcont"]["latent_r2"] == pytest.approx(metrics["latent_r2"], abs=1e-6)
    assert summary["methods"]["random_encoder"]["latent_r2"] < 0.05
    g = pl.read_parquet(out / "inputs" / "genotypes.parquet").sort("eid").filter(pl.col("split") == "test")
    effects = pl.read_csv(out / "inputs" / "panel.tsv", separator="\t")["effect"].to_numpy()
    ad = pl.read_csv(image_cohort / "diagnoses.csv").select("eid", "AD")
    y = g.select("eid").join(ad, on="eid", how="left")["AD"].to_numpy()
    prs = summary["methods"]["prs"]
    assert prs["auc"] == pytest.approx(roc_auc_score(y, np.stack(g["g"].to_numpy()) @ effects))
    assert prs["auc_low"] < prs["auc"] < prs["auc_high"] and prs["auc_high"] - prs["auc_low"] < 0.5
    assert summary["methods"]["gemcont"]["panel_causal_at_5e-8"] is not None  # the truth split ran
    assert (tmp_path / "eval" / "evaluation.png").is_file()
    # the whole embedding-GWAS path (PC rotation, rank normalisation, 22 covariates, missing calls, 128 traits on
    # 300 subjects) on embeddings shuffled across subjects: uniform p-values
    trained = pl.read_parquet(out / "test_embeddings.parquet").select("eid", cs.starts_with("image_"))
    shuffled = trained.with_columns(pl.col("eid").shuffle(seed=3))
    null = _embedding_gwas(shuffled, image_cohort, tmp_path / "null", workers=1)["p_value"].drop_nulls().to_numpy()
    assert stats.kstest(null, "uniform").pvalue > 1e-3 and 0.003 < (null < 0.01).mean() < 0.025
    assert pl.read_csv(tmp_path / "eval" / "evaluation.tsv", separator="\t").height == len(METRICS)


def test_a_cohort_without_images_fails_before_training(mini_cohort, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--task", "gemcont", "--cohort", str(mini_cohort), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "images/manifest.json: file not found" in err[0]
    assert not out.exists()


def test_a_config_file_may_hold_gemcont_model_keys_when_the_task_is_a_flag(tmp_path, capsys):
    (tmp_path / "prs.yaml").write_text("model:\n  genotype_input: prs\n")
    assert main(["train", "--config", str(tmp_path / "prs.yaml"), "--task", "gemcont", "--data",
                 str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "not GEMCONT inputs" in err and "unknown key" not in err
