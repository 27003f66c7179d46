"""Tune sweeps with ASHA (and their resume, and a failed trial), and cluster.yaml against Ray's schema."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
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
def test_asha_sweep_interrupted_and_resumed(tiny_pairs, tiny_space, ray_session, tmp_path, capsys):
    """Four trials, one after another, in a sweep with its own Ray, interrupted (Ctrl-C) once its second trial has
    reported, then `--resume`d: a trial that had finished is not trained again; ASHA stops at least one trial early
    and the trials after it still start and finish (issue 21: a stopped trial's leftovers starved the next one's
    reads, and the sweep hung); results.parquet, best_config.yaml and table1.md."""
    out = tmp_path / "sweep"
    env = {**os.environ, "RAY_ADDRESS": "local", "RAY_USAGE_STATS_ENABLED": "0"}  # its own Ray, then interrupted
    process = subprocess.Popen([sys.executable, "-m", "comical", "tune", "--pairs", str(tiny_pairs), "--space",
                                str(tiny_space), "--num-samples", "4", "--max-epochs", "2", "--out", str(out)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 400
    started = []
    while time.time() < deadline and process.poll() is None:
        # trials run one at a time: once the second has reported, the first is finished (TERMINATED)
        started = sorted((out / "sweep").glob("_trial_*/result.json"))
        if len(started) >= 2 and started[1].read_text().strip():
            break
        time.sleep(0.5)
    assert len(started) >= 2, "the second trial did not report before the deadline"
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: Tune saves the sweep state and stops
    process.wait(timeout=120)
    trials = sorted((out / "sweep").glob("_trial_*/result.json"))
    before = {p.parent.name: p.read_text() for p in trials[:-1]}  # all but the newest had finished
    assert before
    assert main(["tune", "--resume", str(out)]) == 0
    for name in before:  # a trial that had finished was not trained again
        assert (out / "sweep" / name / "result.json").read_text() == before[name]

    results = pl.read_parquet(out / "results.parquet")
    assert results.height == 4 and not results["errored"].any() and results["stopped_by_asha"].any()
    printed = capsys.readouterr().out.splitlines()
    # the resumed part's console: a line per event of the trials that had not finished (the saved callbacks print to
    # this console, not the log)
    ended = [line for line in printed if line.startswith("tune: trial") and " ended after " in line]
    assert 1 <= len(ended) <= 4 - len(before)
    assert sum("stopped early by ASHA" in line for line in ended) <= results["stopped_by_asha"].sum()
    assert len(printed) <= 4 * 4 + 2  # a line per trial event, not Tune's tables (those are in tune.log)
    assert "Trial status" in (out / "tune.log").read_text()
    assert {"learning_rate", "batch_size", "width", "warmup_steps", "epochs_run", "stopped_by_asha",
            "best_val_loss", "last_val_loss", "last_val_within_bucket_accuracy",
            "last_val_within_bucket_accuracy_null"} <= set(results.columns)
    assert results["best_val_loss"].is_sorted()  # ranked by validation loss, lowest first
    assert results["epochs_run"].max() == 2 and (results["epochs_run"] >= 1).all()
    assert (results["stopped_by_asha"] == (results["epochs_run"] < 2)).all()
    best = TrainConfig.from_yaml(out / "best_config.yaml")
    top = results.row(0, named=True)
    assert best.optim.learning_rate == pytest.approx(top["learning_rate"]) and best.batch_size == top["batch_size"]
    table = (out / "table1.md").read_text()
    assert "| **Learning rate** |" in table and "Top 1.0% SNPs" in table


@pytest.mark.slow
def test_a_failed_trial_is_recorded_with_its_line_and_the_sweep_goes_on(toy_data, ray_session, tmp_path, capsys):
    """A trial whose sampled settings its data cannot hold (a batch larger than a worker's share of the training
    rows: Table 1's 4096 on a small store is the user's case) fails inside Tune with its one line; results.parquet
    records it, the console says so, the other trial runs, and best_config.yaml is the one that finished. A stalled
    trial reaches Tune the same way, as run_training's RunFailed; the watchdog's own Ray runs are test_train's."""
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"batch_size": {"type": "grid", "values": [256, 1_000_000]}}))
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump({"task": "toy", "seed": 1, "engine": {"max_failures": 0}}))
    out = tmp_path / "sweep"
    assert main(["tune", "--pairs", str(toy_data), "--config", str(config), "--space", str(space),
                 "--num-samples", "1", "--max-epochs", "1", "--out", str(out)]) == 0
    results = pl.read_parquet(out / "results.parquet")
    assert results.height == 2 and sorted(results["batch_size"]) == [256, 1_000_000]  # a grid: each value once
    assert results["errored"].to_list() == [False, True]  # finished trials first
    failed = results.row(1, named=True)
    assert failed["batch_size"] == 1_000_000 and failed["error"].startswith("--batch-size 1000000: larger than")
    assert results.row(0, named=True)["batch_size"] == 256 and results["epochs_run"][0] == 1
    printed = capsys.readouterr().out.splitlines()
    lines = [line for line in printed if " failed: --batch-size 1000000: larger than" in line]
    assert len(lines) == 1 and lines[0].endswith("the sweep goes on")
    assert TrainConfig.from_yaml(out / "best_config.yaml").batch_size == 256
    # a stalled trial's error file: Tune's traceback around the watchdog's RunFailed; its line is the stall line
    from comical.tuning.sweep import _error_line

    stalled = ("Traceback (most recent call last):\n  File \"sweep.py\", line 104, in _trial\n    raise result.error\n"
               "comical.data_io.errors.RunFailed: no progress for 16 s (engine.stall_seconds 15): worker 0 waited for "
               "its first train batch from Ray Data; the cluster has 0 of 4 CPUs free\n")
    assert _error_line(stalled).startswith("no progress for 16 s") and _error_line(stalled).endswith("CPUs free")


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
