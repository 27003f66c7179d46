"""The momentum T1/T2 tasks (paper 003): the EMA, the queue across workers, checkpoint restore, end to end."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from conftest import ValidationShard, destroy_process_group, write_showcase
import torch
import torch.distributed as dist
from torch.nn import functional as F

from comical.distributed.losses import queue_infonce
from comical.distributed.tasks.momentum import Autoencoder, MomentumConfig, MomentumModel, MomentumTask

SMALL = MomentumConfig(channels=(4, 8), image_features=16, embed_dim=8, queue_size=12, momentum=0.9,
                       augment="off")
SHAPE = (8, 8, 8)


def test_ema_update_matches_the_direct_computation():
    torch.manual_seed(0)
    model = MomentumModel(SMALL, SHAPE, ("t1", "t2"))
    for p in model.query.parameters():  # the query towers have moved away from the keys (as after steps)
        p.data.add_(torch.randn_like(p))
    before = {k: v.clone() for k, v in model.key.state_dict().items()}
    query = model.query.state_dict()
    model.momentum_update()
    for name, p in model.key.named_parameters():
        torch.testing.assert_close(p, 0.9 * before[name] + 0.1 * query[name])
    assert not any(p.requires_grad for p in model.key.parameters())


@pytest.mark.parametrize("task_name", ["momentum-t1t2", "autoencoder-t1t2"])
def test_a_validation_forward_in_chunks_scores_what_one_forward_scores(task_name):
    """The image tasks' validation runs the forward 64 volumes at a time (memory) and joins the per-row outputs: the
    loss and top-1 over batches of 100 candidates (two chunks, one partial) equal a single forward's."""
    from comical.distributed.config import TrainConfig
    from comical.distributed.task import get_task
    from comical.distributed.train import evaluate

    task = get_task(task_name).bind({"image_shape": list(SHAPE)})
    torch.manual_seed(0)
    model = task.build_model(SMALL, task.info)
    g = torch.Generator().manual_seed(1)
    shard = ValidationShard({"eid": torch.arange(150), "t1": torch.randint(0, 255, (150, 512), generator=g, dtype=torch.uint8),
                    "t2": torch.randint(0, 255, (150, 512), generator=g, dtype=torch.uint8),
                    "t1_scale": torch.full((150,), 0.01), "t2_scale": torch.full((150,), 0.02)})
    config = TrainConfig.from_dict({"task": task_name, "eval_batch_size": 100, "model": SMALL.to_dict()})
    assert task.eval_chunk == 64 and task.eval_chunks({"eid": torch.arange(100)}) == 2
    chunked = evaluate(model, task, shard, config)
    task.eval_chunk = None  # the instance's: one forward per batch
    whole = evaluate(model, task, shard, config)
    assert chunked.keys() == whole.keys() and chunked["n_pairs"] == 150
    for key in whole:
        assert chunked[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-6), key


def test_queue_infonce_equals_the_written_out_loss():
    g = torch.Generator().manual_seed(0)
    q, k = (F.normalize(torch.randn(5, 4, generator=g, dtype=torch.float64), dim=1) for _ in range(2))
    queue = F.normalize(torch.randn(7, 4, generator=g, dtype=torch.float64), dim=1)
    # every key of the batch and of the queue in the denominator, the query's own key on top
    expected = np.mean([-np.log(np.exp(float(q[i] @ k[i]) / 0.1) / (np.exp((k @ q[i]).numpy() / 0.1).sum()
                                                                     + np.exp((queue @ q[i]).numpy() / 0.1).sum()))
                        for i in range(5)])
    assert queue_infonce(q, k, queue, 0.1).item() == pytest.approx(expected, rel=1e-10)
    batch_only = np.mean([-np.log(np.exp(float(q[i] @ k[i]) / 0.1) / np.exp((k @ q[i]).numpy() / 0.1).sum())
                          for i in range(5)])
    assert queue_infonce(q, k, None, 0.1).item() == pytest.approx(batch_only, rel=1e-10)


def _queue_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)  # the same model on both workers, as the engine makes it
    model = MomentumModel(SMALL, SHAPE, ("t1", "t2"))
    task = MomentumTask()
    config = type("C", (), {"model": SMALL})()
    sent = []
    for step in range(5):  # 5 steps x 2 workers x 2 keys = 20 keys through a queue of 12: it wraps
        keys = {k: F.normalize(torch.full((2, 8), float(100 * step + 10 * rank + j)) + torch.arange(8.0), dim=1)
                for j, k in enumerate(("ka", "kb"))}
        outputs = {"qa": keys["ka"], "qb": keys["kb"], **keys, "training": True,
                   "queue_a": model.queue_a.clone(), "queue_b": model.queue_b.clone()}
        task.loss(outputs, {}, config, rank=rank, world_size=world)
        task.after_step(model)
        # the loss saw the queue as it was before this step's keys went in
        assert not torch.equal(outputs["queue_a"], model.queue_a)
        sent.append(keys["ka"])
    gathered = [torch.empty_like(model.queue_a) for _ in range(world)]
    dist.all_gather(gathered, model.queue_a)
    mine = torch.cat(sent)
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine)
    if rank == 0:
        torch.save({"queues": gathered, "sent": every, "ptr": model.queue_ptr.clone(),
                    "enqueued": model.enqueued.clone()}, out_file)
    dist.destroy_process_group()


def test_the_queue_is_the_same_on_every_worker_and_first_in_first_out(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "queues.pt"
    mp.spawn(_queue_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    result = torch.load(out, weights_only=True)
    torch.testing.assert_close(result["queues"][0], result["queues"][1])  # one queue on both workers
    # keys in the order they were enqueued: per step, rank 0's two then rank 1's two
    order = torch.cat([torch.cat([result["sent"][r][2 * s:2 * s + 2] for r in range(2)]) for s in range(5)])
    assert int(result["enqueued"]) == 20 and int(result["ptr"]) == 20 % 12
    expected = torch.empty(12, 8)
    for i, key in enumerate(order):  # FIFO over 12 slots: the last 12 keys survive, oldest overwritten
        expected[i % 12] = key
    torch.testing.assert_close(result["queues"][0], expected)


def test_queue_and_key_towers_survive_a_deepspeed_checkpoint_restore(tmp_path, monkeypatch, request):
    from comical.distributed.config import TrainConfig
    from comical.distributed.engine import make_engine

    for key, value in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT="29613", RANK="0", WORLD_SIZE="1",
                           LOCAL_RANK="0").items():
        monkeypatch.setenv(key, value)
    dist.init_process_group("gloo", rank=0, world_size=1)

    request.addfinalizer(destroy_process_group)  # DeepSpeed's cached groups too: a later engine finds none stale
    config = TrainConfig.from_dict({"task": "momentum-t1t2", "batch_size": 4, "engine": {"zero_stage": 2},
                                    "model": {"channels": [4, 8], "image_features": 16, "embed_dim": 8,
                                              "queue_size": 12, "augment": "off"}})
    task = MomentumTask().bind({"image_shape": list(SHAPE), "seed": 0})
    g = torch.Generator().manual_seed(0)
    batches = [{"a": torch.rand(4, 1, *SHAPE, generator=g), "b": torch.rand(4, 1, *SHAPE, generator=g)}
               for _ in range(3)]

    def step(engine, batch):
        loss = task.loss(engine(batch), batch, config, rank=0, world_size=1)
        engine.backward(loss)
        engine.step()
        task.after_step(engine.module)
        return loss.item()

    torch.manual_seed(0)
    first = make_engine(task.build_model(config.model, task.info), config, 1, torch.device("cpu"))
    step(first, batches[0]), step(first, batches[1])
    assert int(first.module.enqueued) == 8 and int(first.module.queue_ptr) == 8
    first.save(tmp_path, {"epoch": 3})
    torch.manual_seed(1)  # other initial weights and queue, overwritten by the load
    second = make_engine(task.build_model(config.model, task.info | {"seed": 5}), config, 1, torch.device("cpu"))
    assert second.load(tmp_path)["epoch"] == 3
    state = second.full_state_dict()
    for key, value in first.full_state_dict().items():  # queues, pointer, key towers and query towers
        torch.testing.assert_close(state[key], value)
    assert step(second, batches[2]) == pytest.approx(step(first, batches[2]), rel=1e-6)
    torch.testing.assert_close(second.module.queue_b, first.module.queue_b)


def test_the_paired_r2_difference_and_its_interval_equal_a_loop_over_resamples_with_scikit_learn():
    from sklearn.metrics import r2_score

    from comical.pipelines.momentum.evaluate import paired_r2_difference

    rng = np.random.default_rng(1)
    y = rng.normal(size=300)
    a, b = y + rng.normal(size=300), y + 2 * rng.normal(size=300)
    ours = paired_r2_difference(y, a, b, seed=3, resamples=500)
    draws = np.random.default_rng(3).integers(0, 300, (500, 300))  # the same resamples
    loop = [r2_score(y[d], a[d]) - r2_score(y[d], b[d]) for d in draws]
    assert ours["difference"] == pytest.approx(r2_score(y, a) - r2_score(y, b))
    assert (ours["low"], ours["high"]) == pytest.approx(tuple(np.percentile(loop, [2.5, 97.5])))


def test_the_single_modality_and_autoencoder_models_keep_their_shapes():
    torch.manual_seed(0)
    x = torch.rand(3, 1, *SHAPE)
    single = MomentumModel(SMALL, SHAPE, ("t1", "t1"))
    assert list(single.query) == ["t1"] and list(single.key) == ["t1"]
    out = single.train()({"a": x, "b": x.flip(2)})
    assert out["qa"].shape == (3, 8) and torch.allclose(out["qa"].norm(dim=1), torch.ones(3))
    ae = Autoencoder(SMALL, (7, 9, 8))
    y = ae({"a": torch.rand(2, 1, 7, 9, 8), "b": torch.rand(2, 1, 7, 9, 8)})
    assert y["reconstruction"].shape == y["target"].shape == (2, 2, 7, 9, 8) and y["z"].shape == (2, 8)


@pytest.fixture(scope="module")
def momentum_cohort(image_cohort, ray_session, tmp_path_factory):
    """The image cohort as a user would bring it (issue 33's whole path): its tables as a showcase export and its
    genotypes as the .pgen plink2 exports (the .bed where plink2 is not installed), taken in by `comical cohort
    build`; its T1 and T2 volumes and atlas as NIfTI files (nibabel), taken in by `comical images import`; the truth
    files are the simulated cohort's. The T1/T2 tests train and evaluate on it."""
    import nibabel

    from comical.cli import main
    from comical.data_io.images import open_image_store

    root = tmp_path_factory.mktemp("nifti")
    write_showcase(image_cohort, root / "showcase.csv", gaps=False)
    genotypes = image_cohort / "genotypes"
    if shutil.which("plink2"):  # .pgen: in the suite a BGEN's reads cost evaluate momentum 10-15 s more, and
        # test_cohort_build already builds from a BGEN
        subprocess.run(["plink2", "--threads", "1", "--bfile", str(genotypes), "--make-pgen", "--out",
                        str(root / "ukb_imp")], check=True, capture_output=True)
        genotypes = root / "ukb_imp"
    cohort = root / "cohort"
    assert main(["cohort", "build", "--showcase", str(root / "showcase.csv"), "--genotypes", str(genotypes),
                 "--catalog", str(image_cohort / "gwas_catalog.tsv"), "--out", str(cohort)]) == 0
    store = open_image_store(image_cohort / "images")
    for modality in ("t1", "t2"):
        volumes, eids = store.read(modality)
        for volume, eid in zip(volumes, eids):
            (root / "data" / str(eid)).mkdir(parents=True, exist_ok=True)
            nibabel.save(nibabel.Nifti1Image(volume, np.array(store.manifest["affine"])),
                         root / "data" / str(eid) / f"{modality}.nii.gz")
    for item in image_cohort.iterdir():  # what a showcase does not hold: the truth, cognition, ePRS
        if not (cohort / item.name).exists() and item.name != "images" and not item.name.startswith("genotypes."):
            (cohort / item.name).symlink_to(item)
    data = root / "data" / "{eid}"
    assert main(["images", "import", "--t1", str(data / "t1.nii.gz"), "--t2", str(data / "t2.nii.gz"), "--atlas",
                 str(image_cohort / "images" / "atlas.nii.gz"), "--atlas-labels",
                 str(image_cohort / "images" / "atlas_labels.csv"), "--out", str(cohort / "images")]) == 0
    return cohort


def test_imported_volumes_are_the_simulated_ones_up_to_the_stored_precision(image_cohort, momentum_cohort):
    """Each imported volume is the simulated store's, divided by its 99.5th percentile above 0 and clipped to 1,
    within the two uint8 steps (the simulated store's and the imported store's); the atlas comes back as it was."""
    import nibabel

    from comical.data_io.images import open_image_store

    simulated, imported = open_image_store(image_cohort / "images"), open_image_store(momentum_cohort / "images")
    assert imported.eids.tolist() == simulated.eids.tolist() and imported.shape == simulated.shape
    np.testing.assert_allclose(imported.manifest["affine"], simulated.manifest["affine"], atol=1e-6)
    for modality in ("t1", "t2"):
        original, _ = simulated.read(modality, simulated.eids[:50])
        stored, _ = imported.read(modality, simulated.eids[:50])
        for a, b in zip(original, stored):
            expected = np.clip(a / np.percentile(a[a > 0], 99.5), 0, 1)
            np.testing.assert_allclose(b, expected, atol=1 / 255 / 2 + 1e-6)
    same = [np.asarray(nibabel.load(c / "images" / "atlas.nii.gz").dataobj) for c in (image_cohort, momentum_cohort)]
    np.testing.assert_array_equal(same[0], same[1])


@pytest.fixture(scope="module")
def momentum_run(momentum_cohort, ray_session, tmp_path_factory):
    """The T1/T2 model through the engine's worker loop in this process (the queue shared by two workers is
    test_the_queue_is_the_same_on_every_worker_and_first_in_first_out's)."""
    from conftest import training_in_process

    from comical.cli import main

    out = tmp_path_factory.mktemp("momentum") / "run"
    with training_in_process():
        assert main(["train", "--task", "momentum-t1t2", "--cohort", str(momentum_cohort), "--out", str(out),
                     "--epochs", "2"]) == 0  # the task's batch: 32
    return out


@pytest.mark.slow
def test_momentum_t1t2_trains(momentum_run):
    import json

    import polars as pl
    from safetensors.torch import load_file

    out = momentum_run
    embeddings = pl.read_parquet(out / "embeddings.parquet")
    assert embeddings.height == 2000 and {"t1_0", "t2_127", "split"} <= set(embeddings.columns)
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["top1_accuracy"] > 5 * metrics["top1_accuracy_chance"]  # T1 finds its T2 far above chance
    weights = load_file(str(out / "model" / "model.safetensors"))
    enqueued, ptr = int(weights["enqueued"]), int(weights["queue_ptr"])
    # every step enqueued its 32 keys; the pointer followed them around the 512 slots
    assert enqueued > 0 and enqueued % 32 == 0 and ptr == enqueued % 512
    # the key towers moved from their initial weights (a copy of the initial query towers) towards the trained query
    # towers: the EMA ran in the distributed run
    torch.manual_seed(0)
    spec = json.loads((out / "model" / "model.json").read_text())
    task = MomentumTask().bind(spec["input"])
    initial = task.build_model(MomentumConfig.from_dict(spec["model"]), spec["input"]).state_dict()
    name = "t1.0.head.weight"
    key, query, start = weights[f"key.{name}"], weights[f"query.{name}"], initial[f"key.{name}"]
    assert not torch.equal(key, start) and (key - query).norm() < (start - query).norm()


@pytest.mark.slow
def test_evaluate_momentum_finds_the_planted_latent_in_an_embedding_that_carries_it(momentum_cohort, momentum_run,
                                                                                     tmp_path):
    """Stand-in runs: a "joint" model whose T1 and T2 sides both carry the planted image latent (the AD liability of
    its causal variants) and a reconstruction baseline of pure noise; the evaluation must tell them apart. (The
    trained run lends its model/ folder: the untrained-encoder reference is built from it.)"""
    import shutil

    import polars as pl

    from comical.cli import main

    latent = pl.read_parquet(momentum_cohort / "truth" / "image_latent.parquet").sort("eid")
    age = pl.read_csv(momentum_cohort / "covariates.csv").sort("eid")["age"].to_numpy().astype(float)
    rng = np.random.default_rng(0)
    n = latent.height
    split = np.where(rng.random(n) < 0.7, "train", np.where(rng.random(n) < 0.5, "val", "test"))
    z = latent["latent"].to_numpy()

    def side(prefix: str) -> dict:  # the latent in three columns (so it is the first PC), age, two of noise
        cols = {f"{prefix}_{k}": z + 0.3 * rng.normal(size=n) for k in range(3)}
        cols[f"{prefix}_3"] = (age - age.mean()) / age.std()
        return cols | {f"{prefix}_{k}": rng.normal(size=n) for k in range(4, 6)}

    runs = {}
    for name, columns in (("joint", side("t1") | side("t2")),
                          ("autoencoder", {f"z_{k}": rng.normal(size=n) for k in range(6)})):
        runs[name] = tmp_path / name
        runs[name].mkdir()
        pl.DataFrame({"eid": latent["eid"], "split": split, **columns}).write_parquet(runs[name] / "embeddings.parquet")
    shutil.copytree(momentum_run / "model", runs["joint"] / "model")
    out = tmp_path / "eval"
    from comical.data_io.cohort import load_cohort
    from comical.pipelines.statgen.qc import run_qc

    (tmp_path / "qc").mkdir()  # a QC folder to reuse (--qc), as `comical qc` writes it
    run_qc(load_cohort(momentum_cohort)).write(tmp_path / "qc")
    assert main(["evaluate", "momentum", "--runs", f"joint={runs['joint']},autoencoder={runs['autoencoder']}",
                 "--cohort", str(momentum_cohort), "--out", str(out), "--qc", str(tmp_path / "qc")]) == 0
    assert json.loads((out / "run.json").read_text())["qc"] == str((tmp_path / "qc").resolve())
    table = {r["model"]: r for r in pl.read_csv(out / "evaluation.csv").iter_rows(named=True)}
    joint, noise = table["joint"], table["autoencoder"]
    assert joint["t1_latent_variants_at_5e-8"] > 0 and joint["t2_latent_variants_at_5e-8"] > 0
    assert joint["variants_both_sides"] > 0 and noise["z_variants_at_5e-8"] == 0
    assert joint["t1_mean_h2"] > noise["z_mean_h2"]
    assert joint["age_mae"] < 0.5 * joint["age_mae_mean_predictor"]  # age is a column of the embedding
    assert noise["age_mae"] > 0.9 * noise["age_mae_mean_predictor"]
    assert joint["latent_r2"] > 0.8 and abs(noise["latent_r2"]) < 0.1
    # what training added over the same architecture untrained: the stand-in carries the latent, so its interval
    # lies above 0, and it equals the two rows' R^2 difference
    learned = json.loads((out / "summary.json").read_text())["joint_minus_untrained_r2"]["latent"]
    assert learned["difference"] == pytest.approx(joint["latent_r2"] - table["untrained"]["latent_r2"])
    assert 0 < learned["low"] < learned["difference"] < learned["high"] and "What training added" in (
        out / "evaluation.md").read_text()
    assert joint["r_t1_t2"] > 0.5 and joint["rg_t1_t2"] > 0.5  # the sides share the latent
    # the references are there: the joint architecture untrained, and the raw voxels' PCs
    assert {"untrained", "raw voxels"} <= set(table) and table["untrained"]["dims"] == 256
    assert table["raw voxels"]["dims"] == 64
    assert (out / "evaluation.png").is_file() and "momentum" in (out / "evaluation.md").read_text()
    # the ceiling: the planted latent is all genetic, so its own HE heritability is far above 2 se, and the joint
    # model's first PC (the latent plus noise) reaches at most about it
    ceiling = json.loads((out / "summary.json").read_text())["ceiling"]
    assert ceiling["latent_h2"] > 2 * ceiling["latent_h2_se"] and "The ceiling" in (out / "evaluation.md").read_text()
    assert joint["t1_mean_h2"] < ceiling["latent_h2"] + 2 * ceiling["latent_h2_se"]


def test_raw_voxel_pcs_streamed_in_batches_equal_an_in_memory_pca(momentum_run, monkeypatch):
    """The raw-voxel reference of `evaluate momentum` reads volumes batch by batch: with every training subject in
    its fit sample it equals scikit-learn's PCA of the whole array; with a 300-subject sample its first PCs follow."""
    import polars as pl
    from sklearn.decomposition import PCA

    from comical.data_io.images import open_image_store
    from comical.pipelines.momentum import evaluate

    frame = pl.read_parquet(momentum_run / "embeddings.parquet").sort("eid")
    eids, split = frame["eid"].to_numpy(), frame["split"].to_numpy()
    store = open_image_store(json.loads((momentum_run / "model" / "model.json").read_text())["input"]["images"])
    x = np.hstack([store.read(m, eids)[0].reshape(len(eids), -1) for m in ("t1", "t2")])
    expected = PCA(8, random_state=0).fit(x[split == "train"]).transform(x)
    streamed = evaluate._raw_voxels(momentum_run, eids, split, 0, components=8)
    assert streamed["eid"].to_list() == eids.tolist()
    np.testing.assert_allclose(streamed.select([f"raw_{k}" for k in range(8)]).to_numpy(), expected,
                               rtol=1e-3, atol=1e-3 * np.abs(expected).max())
    monkeypatch.setattr(evaluate, "RAW_PCA_SUBJECTS", 300)
    sampled = evaluate._raw_voxels(momentum_run, eids, split, 0, components=8)
    for k in range(2):
        assert abs(np.corrcoef(sampled[f"raw_{k}"], expected[:, k])[0, 1]) > 0.9


@pytest.mark.slow
def test_embed_reads_a_momentum_run_and_refuses_a_model_without_embeddings(momentum_run, momentum_cohort, tmp_path,
                                                                           capsys):
    """`comical embed` of a T1/T2 run: every subject with its split and both sides, equal to the embeddings the run
    wrote at its end; a model with no per-subject embeddings of its own (the heads) gets one line, not a traceback."""
    import json
    import shutil

    import polars as pl

    from comical.cli import main

    out = tmp_path / "t1t2.parquet"
    assert main(["embed", "--run", str(momentum_run), "--cohort", str(momentum_cohort), "--out", str(out)]) == 0
    assert "momentum-t1t2 embeddings" in capsys.readouterr().out
    ours, written = pl.read_parquet(out).sort("eid"), pl.read_parquet(momentum_run / "embeddings.parquet").sort("eid")
    assert ours.columns == written.columns and ours["split"].to_list() == written["split"].to_list()
    np.testing.assert_allclose(ours.drop("eid", "split").to_numpy(), written.drop("eid", "split").to_numpy(),
                               rtol=1e-5, atol=1e-6)
    heads = tmp_path / "heads"
    shutil.copytree(momentum_run / "model", heads / "model")
    spec = json.loads((heads / "model" / "model.json").read_text())
    (heads / "model" / "model.json").write_text(json.dumps(spec | {"task": "heads"}))
    assert main(["embed", "--run", str(heads), "--cohort", str(momentum_cohort), "--out", str(tmp_path / "h.parquet")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a 'heads' run has no per-subject embeddings" in err
