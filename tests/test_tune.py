"""Tune sweeps: ASHA, a failed trial, an interrupt and its resume; cluster.yaml against Ray's schema."""

from __future__ import annotations

import copy
import json
import os
import signal
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from comical.cli import main
from comical.distributed.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
TINY_SPACE = {  # small, fast corners of the Table 1 space, so a CI sweep takes a minute or two
    "batch_size": {"type": "choice", "values": [512, 1024]},
    "model.width": {"type": "choice", "values": [32]},
    "optim.learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
    "optim.warmup_steps": {"type": "randint", "low": 0, "high": 20},
}


@pytest.fixture
def tiny_space(tmp_path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(TINY_SPACE))
    return path


def test_cluster_yaml_validates_against_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    types = config["available_node_types"]
    assert types["a100"]["resources"]["GPU"] == 8 and types["h100"]["resources"]["GPU"] == 8
    assert "GPU" not in types[config["head_node_type"]]["resources"]
    broken = copy.deepcopy(config)
    broken["available_node_types"]["a100"]["min_workers"] = "two"
    with pytest.raises(Exception, match="not of type 'integer'"):
        validate_config(prepare_config(broken))


def test_table1_space_is_shipped_and_brackets_the_papers_values():
    from comical.tuning.sweep import load_space

    space = load_space("table1")
    assert 4096 in space["batch_size"]["values"] and 64 in space["model.width"]["values"]
    lr = space["optim.learning_rate"]
    assert lr["low"] <= 1e-4 and 3.3e-3 <= lr["high"] and all("source" in spec for spec in space.values())


@pytest.mark.slow
def test_asha_stops_a_trailing_trial_the_next_still_runs_and_a_failed_trial_is_recorded(tiny_pairs, ray_session,
                                                                                       tmp_path, capsys):
    """A real sweep (each trial a Ray Train run) over a grid, one trial at a time: learning rates 3e-3, 1e-6, 1e-3,
    each at a batch the store holds (512) and one it cannot (Table 1's 4096 on a small store is the user's case).
    ASHA stops the 1e-6 trial after its first epoch (its loss trails the first trial's), and the trial after it
    still starts and ends (issue 21: a stopped trial's leftovers starved the next one's reads and the sweep hung).
    The too-large batches fail inside Tune with their one line, recorded while the sweep goes on. results.parquet,
    best_config.yaml (a trial that finished) and table1.md. The interrupt and resume: the next test."""
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"batch_size": {"type": "grid", "values": [512, 1_000_000]},
                                     "optim.learning_rate": {"type": "grid", "values": [3e-3, 1e-6, 1e-3]}}))
    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump({"model": {"width": 32}, "optim": {"warmup_steps": 0}}))
    out = tmp_path / "sweep"
    assert main(["tune", "--pairs", str(tiny_pairs), "--config", str(config), "--space", str(space),
                 "--num-samples", "1", "--max-epochs", "2", "--out", str(out)]) == 0
    results = pl.read_parquet(out / "results.parquet")
    assert results.height == 6 and results["errored"].to_list() == [False] * 3 + [True] * 3  # finished first
    failed = results.filter(pl.col("errored"))
    assert (failed["batch_size"] == 1_000_000).all()
    assert all(line.startswith("--batch-size 1000000: each of 1 workers would need") for line in failed["error"])
    ran = results.filter(~pl.col("errored")).sort("learning_rate")
    assert ran["learning_rate"].to_list() == [1e-6, 1e-3, 3e-3] and (ran["batch_size"] == 512).all()
    assert ran.row(0, named=True)["stopped_by_asha"] and ran["epochs_run"].to_list()[0] == 1  # 1e-6 trails
    assert ran["epochs_run"].to_list()[1] >= 1  # the trial after the stopped one ran
    assert (ran["stopped_by_asha"] == (ran["epochs_run"] < 2)).all()
    printed = capsys.readouterr().out.splitlines()
    assert sum(line.endswith("(stopped early by ASHA)") for line in printed) == results["stopped_by_asha"].sum()
    failures = [line for line in printed if " failed: --batch-size 1000000: each of 1 workers" in line]
    assert len(failures) == 3 and all(line.endswith("the sweep goes on") for line in failures)
    assert len(printed) <= 6 * 4 + 2  # a line per trial event, not Tune's tables (those are in tune.log)
    assert "Trial status" in (out / "tune.log").read_text()
    assert {"learning_rate", "batch_size", "epochs_run", "stopped_by_asha", "best_val_loss", "last_val_loss",
            "last_val_within_bucket_accuracy", "last_val_within_bucket_accuracy_null"} <= set(results.columns)
    assert results["best_val_loss"].head(3).is_sorted()  # ranked by validation loss, lowest first
    best = TrainConfig.from_yaml(out / "best_config.yaml")
    top = results.row(0, named=True)
    assert best.optim.learning_rate == pytest.approx(top["learning_rate"]) and best.batch_size == 512
    assert best.model.width == 32 and best.optim.warmup_steps == 0  # the base config's own settings kept
    table = (out / "table1.md").read_text()
    assert "| **Learning rate** |" in table and "Top 1.0% SNPs" in table
    assert json.loads((out / "run.json").read_text())["state"] == "done"
    # a stalled trial's error file: Tune's traceback around the watchdog's RunFailed; its line is the stall line (the
    # watchdog's own Ray runs are test_train's; a stalled trial reaches Tune as run_training's RunFailed)
    from comical.tuning.sweep import _error_line

    stalled = ("Traceback (most recent call last):\n  File \"sweep.py\", line 104, in _trial\n    raise result.error\n"
               "comical.data_io.errors.RunFailed: no progress for 16 s (engine.stall_seconds 15): worker 0 waited for "
               "its first train batch from Ray Data; the cluster has 0 of 4 CPUs free\n")
    assert _error_line(stalled).startswith("no progress for 16 s") and _error_line(stalled).endswith("CPUs free")


def test_an_interrupted_sweep_resumes_without_training_its_ended_trials_again(tiny_pairs, tiny_space, ray_session,
                                                                            tmp_path, capsys, monkeypatch):
    """Ctrl-C during a sweep of four trials with sampled settings, while its second trial runs: the command
    says so in one line with the resume command, exits 130 and writes no results (the running trial's epochs would
    read as an ASHA stop); `--resume` then runs the rest: a trial that had ended is not run again, and the outputs
    cover all four. Tune's own bookkeeping, in process: the trials are a stand-in that reports epochs (the real
    trials' Ray Train runs are the test above)."""
    from comical.tuning import sweep

    driver, marker = os.getpid(), tmp_path / "interrupted"

    def stand_in(params):  # a local function: Ray sends it by value to the trial's actor
        import math

        import ray.tune

        if ray.tune.get_context().get_trial_id().endswith("_00001") and not marker.exists():
            marker.touch()  # once: the resumed trial runs on
            os.kill(driver, signal.SIGINT)  # Ctrl-C while the second trial runs: Tune saves its state and stops
            time.sleep(60)  # Tune's cleanup ends this trial first
        rate = params["optim"]["learning_rate"]
        for epoch in range(params["base"]["epochs"]):
            ray.tune.report({"val_loss": abs(math.log10(rate) + 3) + 1 / (epoch + 1), "epoch": epoch,
                             "epochs_done": epoch + 1, "val_within_bucket_accuracy": 0.1,
                             "val_within_bucket_accuracy_null": 0.1, "val_bucket_accuracy": 1.0})

    monkeypatch.setattr(sweep, "_trial", stand_in)
    out = tmp_path / "sweep"
    assert main(["tune", "--pairs", str(tiny_pairs), "--space", str(tiny_space), "--num-samples", "4",
                 "--max-epochs", "2", "--out", str(out)]) == 130
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == f"tune: interrupted with 1 of 4 trials ended; the sweep's state is saved: comical tune " \
                          f"--resume {out}"
    assert json.loads((out / "run.json").read_text())["state"] == "interrupted"
    assert not (out / "results.parquet").exists() and not (out / "best_config.yaml").exists()
    first = sorted((out / "sweep").glob("*_00000_*/result.json"))
    assert len(first) == 1 and first[0].read_text().count("\n") == 2  # the trial that had ended: two epochs
    before = first[0].read_text()

    assert main(["tune", "--resume", str(out)]) == 0
    assert first[0].read_text() == before  # the trial that had ended was not run again
    printed = capsys.readouterr().out.splitlines()
    results = pl.read_parquet(out / "results.parquet")
    assert results.height == 4 and not results["errored"].any() and (results["epochs_run"] >= 1).all()
    assert {"learning_rate", "batch_size", "width", "warmup_steps"} <= set(results.columns)
    assert set(results["batch_size"]) <= {512, 1024} and (results["width"] == 32).all()
    assert results["learning_rate"].is_between(1e-4, 1e-2).all() and results["warmup_steps"].is_between(0, 19).all()
    assert results["best_val_loss"].is_sorted()
    ended_lines = [line for line in printed if line.startswith("tune: trial") and " ended after " in line]
    assert len(ended_lines) == 3  # the resumed part's console: the trials that had not ended
    best = TrainConfig.from_yaml(out / "best_config.yaml")
    assert best.optim.learning_rate == pytest.approx(results["learning_rate"][0])
    assert json.loads((out / "run.json").read_text())["state"] == "done"


def test_bad_tune_input_fails_before_any_trial(small_pairs, tmp_path, capsys, ray_session):
    (tmp_path / "broken.yaml").write_text("batch_size: [1024\n")
    (tmp_path / "unknown.yaml").write_text("model.depth: {type: choice, values: [1, 2]}\n")
    cases = [
        (["--space", "nosuchspace"], "no such search space"),
        (["--space", str(tmp_path / "broken.yaml")], "not valid YAML"),
        (["--space", str(tmp_path / "unknown.yaml")], "'model.depth' is not a TrainConfig key"),
        (["--num-samples", "0"], "--num-samples 0"),
        (["--workers-per-trial", "64"], "the Ray cluster has"),
    ]
    for extra, needle in cases:
        status = main(["tune", "--pairs", str(small_pairs), "--out", str(tmp_path / "o"), *extra])
        err = capsys.readouterr().err.strip()
        assert status == 2 and needle in err and len(err.splitlines()) == 1, (needle, err)
        assert not (tmp_path / "o").exists()
    assert main(["tune", "--pairs", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a pair store" in capsys.readouterr().err


def test_bench_scaling_writes_the_table_and_plot(tiny_pairs, tmp_path, capsys, in_process):
    """The command's plumbing through the engine (one worker, in this process): a row per worker count from the
    fit's own epoch metrics, the table, the plot; worker counts the cluster cannot hold are refused first."""
    out = tmp_path / "scaling"
    assert main(["bench", "scaling", "--pairs", str(tiny_pairs), "--workers", "1", "--epochs", "2",
                 "--batch-size", "1024", "--engine", "ddp", "--out", str(out)]) == 0
    table = pl.read_csv(out / "scaling.csv")
    assert table["workers"].to_list() == [1] and (table["samples_per_s"] > 0).all()
    assert table["speedup"][0] == pytest.approx(1.0) and table["epochs_measured"][0] == 1  # the first is warm-up
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 1 | CPU |" in capsys.readouterr().out
    assert main(["bench", "scaling", "--pairs", str(tiny_pairs), "--workers", "1,x", "--out", str(out)]) == 2
    assert main(["bench", "scaling", "--pairs", str(tiny_pairs), "--workers", "1,64", "--out", str(tmp_path / "o")]) == 2
    assert "the Ray cluster has" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_scaling_rows_are_the_median_steady_epoch_of_each_fit(monkeypatch):
    """Speed-up and efficiency against the first worker count, from the epochs after the warm-up (a stand-in fit
    reports fixed epochs: 2 workers twice as fast in samples/s, 1.5x in seconds)."""
    from types import SimpleNamespace

    from comical.distributed import scaling

    def fit(config, storage, info, name):
        n = config.engine.workers
        epochs = [{"epoch": e, "samples_per_s": (100.0 if e == 0 else 1000.0 * n + e), "epoch_seconds": 9.0 / n}
                  for e in range(3)]
        return SimpleNamespace(error=None, best_checkpoints=[(None, m) for m in epochs])

    monkeypatch.setattr(scaling, "run_training", fit)
    monkeypatch.setattr(scaling, "check_cluster_fits", lambda config, driver_cpus: None)
    table = scaling.measure(TrainConfig.from_dict({"epochs": 3}), {}, [1, 2])
    assert table["samples_per_s"].to_list() == [1001.5, 2001.5] and table["epochs_measured"].to_list() == [2, 2]
    assert table["speedup"].to_list() == pytest.approx([1.0, 2001.5 / 1001.5])
    assert table["efficiency"].to_list() == pytest.approx([1.0, 2001.5 / 1001.5 / 2])
