"""`comical train` end to end on the mini cohort: accuracy, outputs, determinism, DDP, resume.

Ray Train runs here: the streamed toy task (two workers) and the stall watchdog; the fault drill (two workers,
DeepSpeed ZeRO-2: the resident path, pinned) runs on a multi-node cluster in tests/test_multinode.py. The rest
trains one worker in this process (`training_in_process`)."""

from __future__ import annotations

import json
from pathlib import Path
import time

import numpy as np
import polars as pl
import pytest
import statsmodels.api as sm
import torch
from conftest import destroy_process_group
from safetensors.torch import load_file

from comical.cli import main
from comical.distributed.config import TrainConfig
from comical.distributed.export import load_model
from comical.distributed.task import get_task
from comical.distributed.tasks.comical import load_split
from comical.distributed.train import evaluate

_TIMING = ("samples_per_s", "epoch_seconds")


def _epochs(run):
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in m.items() if k not in _TIMING} for m in lines]


def test_learns_the_pairs_far_above_chance(trained_run):
    test = json.loads((trained_run / "test_metrics.json").read_text())
    assert test["bucket_accuracy"] >= 0.95  # reachable from identities alone: the paper's metric
    assert test["bucket_accuracy"] > 3 * test["bucket_accuracy_chance"]
    assert test["top1_accuracy"] > 2 * test["top1_accuracy_chance"]
    assert 0 < test["within_bucket_accuracy_chance"] < 1 and 0 <= test["within_bucket_accuracy_null"] < 1
    # every test row is scored, the last partial batch too
    store = Path(TrainConfig.from_yaml(trained_run / "config.yaml").data)
    assert test["n_test_pairs"] == json.loads((store / "manifest.json").read_text())["splits"]["test"]["pairs"]
    assert json.loads((trained_run / "run.json").read_text())["state"] == "done"
    epochs = _epochs(trained_run)
    assert [m["epoch"] for m in epochs] == [0, 1, 2] and epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert test["best_epoch"] == epochs[-1]["best_epoch"]
    assert list((trained_run / "tensorboard").glob("events.out.tfevents.*"))
    config = TrainConfig.from_yaml(trained_run / "config.yaml")
    assert config.engine.zero_stage == 2 and config.engine.workers == 1 and config.batch_size == 1024


# `comical train` with IN_PROCESS_ARGS (one worker in this process: `trained_run`) on the small store, pinned when
# the suite moved its trainings in process (issue 31), so later changes show up. (The two-worker run's pins live with
# the fault drill in tests/test_multinode.py.)
PINNED_ONE_WORKER = {"loss": 6.216912997161999, "within_bucket_accuracy": 0.12145035258242805,
                     "within_bucket_accuracy_null": 0.12162172387662742, "top1_accuracy": 0.12145035258242805,
                     "n_test_pairs": 10494}
PINNED_ONE_WORKER_VAL_LOSSES = [6.296761131132905, 6.2908758161824565, 6.287828102285426]


def test_the_engine_trains_comical_to_the_pinned_metrics(trained_run):
    test = json.loads((trained_run / "test_metrics.json").read_text())
    for key, value in PINNED_ONE_WORKER.items():
        assert test[key] == pytest.approx(value, rel=1e-6), key
    assert [m["val_loss"] for m in _epochs(trained_run)] == pytest.approx(PINNED_ONE_WORKER_VAL_LOSSES, rel=1e-6)


def test_exported_safetensors_reproduce_the_test_metrics(trained_run, small_pairs):
    weights = load_file(str(trained_run / "model" / "model.safetensors"))
    assert "logit_scale" in weights and weights["logit_scale"].shape == (1,)
    model, spec = load_model(trained_run / "model")
    assert spec["task"] == "comical" and spec["input"]["n_bins"] > 0
    config = TrainConfig.from_yaml(trained_run / "config.yaml")
    task = get_task("comical").bind(spec["input"])
    metrics = evaluate(model, task, load_split(small_pairs, "test"), config, seed=config.seed)
    saved = json.loads((trained_run / "test_metrics.json").read_text())
    for key in ("bucket_accuracy", "within_bucket_accuracy", "within_bucket_accuracy_null"):
        assert metrics[key] == pytest.approx(saved[key])
    assert metrics["loss"] == pytest.approx(saved["loss"], rel=1e-6)
    assert not list(trained_run.rglob("*.pkl"))


def test_embed_and_associate(trained_run, mini_cohort, tmp_path, capsys):
    out = tmp_path / "emb.parquet"
    assert main(["embed", "--run", str(trained_run), "--cohort", str(mini_cohort), "--out", str(out)]) == 0
    table = pl.read_parquet(out)
    spec = json.loads((trained_run / "model" / "model.json").read_text())
    info, dim = spec["input"], spec["model"]["embed_dim"]
    assert table.height == 2000 and len(table["snp_embedding"][0]) == len(info["snps"]) * dim
    first = np.asarray(table["snp_embedding"][0]).reshape(len(info["snps"]), dim)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1, atol=1e-5)  # embeddings on the unit sphere
    assert main(["embed", "--run", str(trained_run), "--cohort", str(mini_cohort), "--out", str(out)]) == 2
    assert main(["associate", "--run", str(trained_run)]) == 0
    assoc = pl.read_csv(trained_run / "associations.tsv", separator="\t")
    rows = pl.read_parquet(trained_run / "test_retrievals.parquet")
    manifest = json.loads((Path(json.loads((trained_run / "run.json").read_text())["config"]["data"])
                           / "manifest.json").read_text())
    assert assoc.height == manifest["pairs_per_subject"]  # every candidate pair of the buckets is tested
    assert assoc["n_test"].sum() == rows.filter(pl.col("dosage") >= 0).height
    assert (assoc["p"].drop_nulls().diff().drop_nulls() >= 0).all() and (assoc["test"] == "calibrated").all()
    truth = json.loads((trained_run / "truth_score.json").read_text())
    assert truth["n_candidates"] == assoc.height
    assert set(truth["methods"]) == {"comical", "gwas", "gwas_test_subjects", "snp_only"}
    ceiling = truth["ceiling"]
    assert 0 < ceiling["association"]["recall_at_fdr05"] <= 1  # the planted effects' own test finds some
    accuracy = ceiling["within_bucket_accuracy"]
    assert accuracy["model"] == json.loads((trained_run / "test_metrics.json").read_text())["within_bucket_accuracy"]
    assert ceiling["loss"]["ceiling"] < ceiling["loss"]["floor"]
    per_row = rows["within_bucket_lift"].to_numpy()  # the run's per-row lifts: its standard error, by subject
    assert per_row.mean() == pytest.approx(accuracy["model"] - accuracy["model_null"], abs=1e-5)
    fit = sm.OLS(per_row, np.ones(len(per_row))).fit(cov_type="cluster", cov_kwds={"groups": rows["subject"].to_numpy()})
    assert accuracy["model_lift_se"] == pytest.approx(fit.bse[0], rel=1e-6)
    # a subject's rows are not independent: wider than the rows' own standard error (1.35 times here)
    assert accuracy["model_lift_se"] > per_row.std() / np.sqrt(len(per_row))
    if accuracy["ceiling_lift"] > 3 * accuracy["ceiling_lift_se"]:
        assert accuracy["share_of_lift"] == pytest.approx(accuracy["model_lift"] / accuracy["ceiling_lift"])
    else:  # K = 1: the planted effects' lift is within noise here, so no share is claimed
        assert accuracy["share_of_lift"] is None
    assert "COMICAL" in capsys.readouterr().out
    assert main(["associate", "--run", str(trained_run), "--test", "paper"]) == 0
    paper = pl.read_csv(trained_run / "associations_paper.tsv", separator="\t")
    assert (paper["test"] == "paper").all() and paper.height == assoc.height


# The fault drill (a worker lost mid-epoch: the run restarts from its last checkpoint and ends with pinned
# metrics) runs across nodes, a node removed, on the tiny store: tests/test_multinode.py.


def test_ddp_engine_trains_and_resume_continues_a_run(tiny_pairs, tmp_path, capsys, in_process):
    out = tmp_path / "ddp"
    args = ["train", "--pairs", str(tiny_pairs), "--out", str(out), "--engine", "ddp", "--workers", "1",
            "--epochs", "1", "--batch-size", "512"]
    assert main(args) == 0
    first = _epochs(out)
    assert len(first) == 1 and first[0]["val_bucket_accuracy"] > 0.5
    # --resume of a finished run: the checkpoint says every epoch is done, so nothing is retrained.
    assert main(args + ["--resume"]) == 0
    assert _epochs(out) == first
    assert (out / "model" / "model.safetensors").is_file()


def test_bad_training_input_fails_before_ray(small_pairs, tmp_path, capsys, monkeypatch):
    cases = [
        (["--pairs", str(tmp_path)], "not a pair store"),
        (["--pairs", str(small_pairs), "--zero-stage", "5"], "--zero-stage 5: expected 0, 1, 2 or 3"),
        (["--pairs", str(small_pairs), "--resume"], "--resume: no checkpoint"),
        (["--pairs", str(small_pairs), "--batch-size", "1001", "--workers", "2"], "does not split evenly"),
    ]
    (tmp_path / "bad.yaml").write_text("epochs: 2\nmodel:\n  widht: 32\n")
    cases.append((["--pairs", str(small_pairs), "--config", str(tmp_path / "bad.yaml")], "unknown key(s) ['widht']"))
    for extra, needle in cases:
        assert main(["train", "--out", str(tmp_path / "o"), *extra]) == 2, needle
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
    monkeypatch.setattr("comical.distributed.train.cpu_supports_bf16", lambda: False)
    assert main(["train", "--pairs", str(small_pairs), "--out", str(tmp_path / "o"), "--precision", "bf16"]) == 2
    assert "bf16 on CPU needs" in capsys.readouterr().err


def test_deepspeed_checkpoint_round_trip_in_one_process(small_pairs, tmp_path, monkeypatch, request):
    """Save after two steps, load into a fresh engine: same weights, same next step."""
    import torch.distributed as dist

    from comical.data_io.pair_store import expand_pairs, read_manifest
    from comical.distributed.engine import make_engine
    from comical.distributed.losses import clip_loss

    for key, value in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT="29611", RANK="0", WORLD_SIZE="1",
                           LOCAL_RANK="0").items():
        monkeypatch.setenv(key, value)
    dist.init_process_group("gloo", rank=0, world_size=1)
    request.addfinalizer(destroy_process_group)
    config = TrainConfig.from_dict({"data": str(small_pairs), "batch_size": 256, "engine": {"zero_stage": 2}})
    manifest = read_manifest(small_pairs)
    build_model = get_task("comical").build_model
    data = load_split(small_pairs, "val")
    batches = [expand_pairs({k: v[i * 256:(i + 1) * 256] for k, v in data.items()}, manifest["n_bins"])
               for i in range(3)]

    def step(engine, batch):
        snp, idp, scale = engine(batch)
        loss = clip_loss(snp, idp, scale)
        engine.backward(loss)
        engine.step()
        return loss.item()

    torch.manual_seed(0)
    first = make_engine(build_model(config.model, manifest), config, 1, torch.device("cpu"))
    step(first, batches[0]), step(first, batches[1])
    first.save(tmp_path, {"epoch": 7})
    torch.manual_seed(1)  # different initial weights, overwritten by the load
    second = make_engine(build_model(config.model, manifest), config, 1, torch.device("cpu"))
    assert second.load(tmp_path)["epoch"] == 7
    for key, value in first.full_state_dict().items():
        torch.testing.assert_close(second.full_state_dict()[key], value)
    assert step(second, batches[2]) == pytest.approx(step(first, batches[2]), rel=1e-6)


@pytest.mark.slow
def test_a_second_task_streams_through_the_same_engine(ray_session, toy_data, tmp_path, capsys):
    """The toy task (two noisy views of a Gaussian latent) through Ray Data's streaming path, DeepSpeed ZeRO-2 and
    2 workers: its frozen encoder recovers the latent far better than the same encoder untrained."""
    out = tmp_path / "run"
    assert main(["train", "--task", "toy", "--data", str(toy_data), "--out", str(out), "--workers", "2",
                 "--zero-stage", "2", "--epochs", "3", "--batch-size", "256", "--seed", "0"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("epoch ") for line in printed) == 3 and "latent R^2" in printed[-1]
    test = json.loads((out / "test_metrics.json").read_text())
    assert test["latent_r2"] > test["latent_r2_untrained_encoder"] + 0.2 and test["latent_r2"] > 0.5
    # the raw 32-dim view, read out linearly, is the trivial baseline: after 3 epochs the 8-dim embedding is close
    # to it (measured 0.69 against 0.76), not above it
    assert test["latent_r2"] > test["latent_r2_raw_view"] - 0.15
    epochs = _epochs(out)
    assert [m["epoch"] for m in epochs] == [0, 1, 2] and epochs[-1]["val_loss"] < epochs[0]["val_loss"]
    assert epochs[-1]["val_top1_accuracy"] > 2 * epochs[-1]["val_top1_accuracy_chance"]
    model, spec = load_model(out / "model")  # the export names its task, so any task's encoders load
    assert spec["task"] == "toy" and spec["input"]["view_dim"] == 32
    assert tuple(model.encode("a", torch.zeros(3, 32)).shape) == (3, spec["model"]["embed_dim"])


@pytest.mark.slow
def test_a_run_whose_data_never_arrives_fails_with_one_line(ray_session, toy_data, tiny_pairs, hold_cpus, tmp_path,
                                                           capsys):
    """The no-progress watchdog (issue 21). Another job holds the cluster's free CPUs: first the workers start but
    Ray Data's reads get no CPU (the hang issue 21 saw), then nothing can start: neither the Parquet sampling that
    making a streamed task's datasets runs, nor a resident task's workers. Each run ends after the stall limit with
    one line saying what waited for what, its folder marked failed, instead of hanging."""
    args = ["train", "--task", "toy", "--data", str(toy_data), "--workers", "2", "--epochs", "1", "--batch-size",
            "256", "--stall-seconds", "15", "--max-failures", "0"]
    hold_cpus(3)  # of 4: the two workers take 0.5 CPU each, nothing is left for reads
    start = time.monotonic()
    assert main([*args, "--out", str(tmp_path / "starved")]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert time.monotonic() - start < 120
    assert len(error) == 1 and "no progress for" in error[0] and "first train batch from Ray Data" in error[0]
    assert "of 4 CPUs free" in error[0]
    assert json.loads((tmp_path / "starved" / "run.json").read_text())["state"] == "failed"
    hold_cpus(1)  # now all 4; nothing can start, so a shorter limit needs no margin for a slow start
    assert main([*args[:-4], "--stall-seconds", "6", "--max-failures", "0", "--out", str(tmp_path / "unread")]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "reading the toy task's Parquet metadata waited for a CPU; the cluster has 0 of 4 " \
                               "CPUs free" in error[0]
    assert json.loads((tmp_path / "unread" / "run.json").read_text())["state"] == "failed"
    resident = ["train", "--pairs", str(tiny_pairs), "--workers", "2", "--epochs", "1", "--batch-size", "512",
                "--stall-seconds", "6", "--max-failures", "0", "--out", str(tmp_path / "unstarted")]
    assert main(resident) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "2 workers (0.5 CPU each) waited to start; the cluster has 0 of 4 CPUs" in error[0]


def test_snp_lookup_gives_the_direct_encoding():
    """The fixed-size (SNP, token) lookup of the training step equals encoding every row."""
    from comical.distributed.models import ModelConfig, build_comical_model

    table = [[1, 2, 3], [1, 2, 3], [4, 5, 6]]
    torch.manual_seed(0)
    model = build_comical_model(ModelConfig(), n_snps=3, n_tokens=7, n_idps=2, n_bins=4, snp_token_table=table)
    snp = torch.randint(0, 3, (64,))
    token = torch.tensor(table)[snp, torch.randint(0, 3, (64,))]
    token[::7] = 0  # missing calls
    torch.testing.assert_close(model.encode_snps(snp, token), model._encode_snps(snp, token))


@pytest.mark.parametrize("task_name", ["comical", "toy"])
def test_the_step_compiles_as_one_graph_with_the_same_numbers(task_name, small_pairs, toy_data):
    """No host synchronisation in a task's forward: torch.compile(fullgraph=True) traces it whole (a `.item()` or
    a data-dependent shape such as torch.unique would break the graph and raise), and the compiled forward, loss
    and gradients equal eager's. The aot_eager backend checks the trace without needing a C++ compiler."""
    config = TrainConfig.from_dict({"task": task_name, "data": str(small_pairs if task_name == "comical" else toy_data),
                                    "batch_size": 256})
    task = get_task(task_name)
    task = task.bind(task.check_inputs(config))
    columns = task.read_split(config.data, "train") if task_name == "comical" else \
        pl.read_parquet(Path(config.data) / "train").head(256).to_dict(as_series=False)
    batch = {k: torch.as_tensor(np.asarray(v)[:256]) for k, v in columns.items() if k in task.columns}
    grads = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = task.build_model(config.model, task.info)
        forward = torch.compile(model, fullgraph=True, backend="aot_eager") if compiled else model
        outputs = forward(task.prepare(batch, torch.float32))
        loss = task.loss(outputs, batch, config, rank=0, world_size=1)
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(grads[1][0], grads[0][0])
    assert grads[0][1].keys() == grads[1][1].keys() and len(grads[0][1]) > 2
    for name, grad in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][name], grad, rtol=1e-4, atol=1e-6)


def test_cosine_schedule_equals_torchs_linear_warmup_then_cosine_annealing():
    from comical.distributed.config import TrainConfig
    from comical.distributed.engine import adamw_with_warmup

    config = TrainConfig.from_dict({"optim": {"schedule": "cosine", "warmup_steps": 5, "learning_rate": 0.01}})
    model = torch.nn.Linear(3, 2)
    optimizer, ours = adamw_with_warmup(model, config, total_steps=60)
    reference_opt = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.01)
    reference = torch.optim.lr_scheduler.SequentialLR(reference_opt, [
        torch.optim.lr_scheduler.LinearLR(reference_opt, start_factor=1 / 5, end_factor=1.0, total_iters=4),
        torch.optim.lr_scheduler.CosineAnnealingLR(reference_opt, T_max=55, eta_min=0.0)], milestones=[5])
    for _ in range(60):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(reference_opt.param_groups[0]["lr"], abs=1e-12)
        optimizer.step()
        ours.step()
        reference_opt.step()
        reference.step()
    # a run shorter than ten warm-ups: the warm-up shrinks to a tenth of it
    optimizer, short = adamw_with_warmup(model, config, total_steps=20)
    optimizer.step()
    short.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    constant = TrainConfig.from_dict({"optim": {"warmup_steps": 5, "learning_rate": 0.01}})
    optimizer, flat = adamw_with_warmup(model, constant, total_steps=40)
    for _ in range(10):
        optimizer.step()
        flat.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)


def test_a_task_brings_its_papers_optimiser_settings_under_what_the_config_says():
    from comical.data_io.errors import InputError
    from comical.distributed.config import TrainConfig

    gemcont = TrainConfig.from_dict({"task": "gemcont"}).optim
    assert (gemcont.learning_rate, gemcont.weight_decay, gemcont.schedule) == (3e-4, 1e-4, "cosine")
    assert TrainConfig.from_dict({"task": "gemcont", "optim": {"learning_rate": 1e-3}}).optim.learning_rate == 1e-3
    assert TrainConfig.from_dict({}).optim.schedule == "constant"
    with pytest.raises(InputError, match="schedule"):
        TrainConfig.from_dict({"optim": {"schedule": "linear"}})


def test_a_cosine_schedule_needs_the_streamed_tasks_epoch_length(toy_data, monkeypatch):
    """A streamed task says how many training rows an epoch has (`Task.n_train`), or a cosine schedule has no length:
    the toy task says it; a task that does not is refused before Ray, not inside a worker."""
    from comical.data_io.errors import InputError
    from comical.distributed.tasks.toy import ToyTask
    from comical.distributed.train import check_train_inputs

    config = TrainConfig.from_dict({"task": "toy", "data": str(toy_data), "batch_size": 256,
                                    "optim": {"schedule": "cosine"}})
    info = check_train_inputs(config)
    assert info["n_train"] == json.loads((toy_data / "manifest.json").read_text())["splits"]["train"] > 0
    original = ToyTask.check_inputs
    monkeypatch.setattr(ToyTask, "check_inputs", lambda self, c: {k: v for k, v in original(self, c).items()
                                                                   if k != "n_train"})
    with pytest.raises(InputError, match="optim.schedule cosine: task toy does not say"):
        check_train_inputs(config)
