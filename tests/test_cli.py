"""The CLI end to end on the mini cohort: simulate, qc with a config file and flags, and the demo."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from comical.cli import main
from comical.distributed.config import TrainConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _retry_until_up(command: list[str], env: dict) -> None:
    deadline = time.time() + 120
    while True:
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode == 0:
            return
        if time.time() > deadline:
            raise AssertionError(f"{command[:3]} kept failing: {done.stderr[-2000:]}")
        time.sleep(2)


def _wait_for_job(address: str, job: str, env: dict, done: Path) -> str:
    """The job's final state. `ray job status` is a Python start (about 1.5 s of a core, taken from the job on 2
    cores), so it is asked every 15 s, or at once when `done` (the job's last output) exists."""
    deadline, asked = time.time() + 600, 0.0
    while time.time() < deadline:
        if done.exists() or time.time() - asked > 15:
            asked = time.time()
            text = subprocess.run(["ray", "job", "status", "--address", address, job], env=env,
                                  capture_output=True, text=True).stdout
            for state in ("SUCCEEDED", "FAILED", "STOPPED"):
                if f"{job}' {state.lower()}" in text or f"Status for job '{job}': {state}" in text:
                    return state
        time.sleep(1)
    return "TIMEOUT"


@pytest.mark.slow
def test_the_demo_submitted_with_ray_job_submit_to_a_local_cluster(tmp_path):
    """`ray job submit -- comical demo` on a cluster of its own (the path users take to a cluster, and the demo end
    to end in one Ray run): simulate, pairs, COMICAL on 2 Ray Train workers, the association test, the GWAS on Ray
    tasks, and the heads jobs; every output, and the console on one screen."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard, agent, agent_grpc, runtime_env, metrics = (_free_port() for _ in range(6))
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # its own session folder (short: socket paths)
    # --block keeps the cluster's processes under this one process group: stopping it stops only this cluster
    # (`ray stop` would also stop the test session's own Ray).
    head = subprocess.Popen(["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
                             "--num-cpus=4", "--include-dashboard=true", f"--dashboard-port={dashboard}",
                             "--disable-usage-stats", f"--temp-dir={temp_dir}",
                             # the test session's own Ray holds the default agent ports: its job agent would be
                             # unreachable ("No available agent to submit job")
                             f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
                             f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        workdir = tmp_path / "job"
        workdir.mkdir()
        (workdir / "README.txt").write_text("comical-ray job working dir\n")
        out = tmp_path / "demo"
        address = f"http://127.0.0.1:{dashboard}"
        submit = ["ray", "job", "submit", "--address", address, "--submission-id", "comical-demo", "--no-wait",
                  "--working-dir", str(workdir), "--", "comical", "demo", "--out", str(out), "--epochs", "1"]
        _retry_until_up(submit, env)  # the job server answers a little before its agent takes jobs
        status = _wait_for_job(address, "comical-demo", env, done=out)  # the demo renames its folder in at the end
        printed = subprocess.run(["ray", "job", "logs", "--address", address, "comical-demo"], env=env,
                                 capture_output=True, text=True).stdout
        assert status == "SUCCEEDED", printed[-3000:]
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # the whole cluster at once (a SIGTERM'd `ray start` takes 30 s to stop)
        head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert str(out / "cohort") in printed and str(out / "pairs") in printed
    for needle in ("bucket accuracy", "within-bucket accuracy", "null", "at FDR 5%", "AUPRC COMICAL", "SNP identity alone",
                   "demo: outcome prediction", "demo: ePRS risk scores", "demo: done"):
        assert needle in printed, needle
    assert (out / "cohort" / "genotypes.bed").is_file() and (out / "cohort" / "manifest.json").is_file()
    report = json.loads((out / "pairs" / "qc" / "qc_report.json").read_text())
    assert report["samples"]["kept"] < 2000 and report["variants"]["kept"] < 3000
    assert pl.read_csv(out / "pairs" / "qc" / "pcs.eigenvec", separator="\t").columns[:3] == ["#FID", "IID", "PC1"]
    manifest = json.loads((out / "pairs" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["pairs"] == pl.read_parquet(out / "pairs" / "train").height > 0
    test = json.loads((out / "run" / "test_metrics.json").read_text())
    assert test["bucket_accuracy"] >= 0.95 and (out / "run" / "model" / "model.safetensors").is_file()
    assert (out / "run" / "truth_score.json").is_file() and (out / "run" / "associations.tsv").is_file()
    gwas = json.loads((out / "gwas" / "idps.summary.json").read_text())
    assert len(gwas["phenotypes"]) == 154 and (out / "gwas" / "idps.manhattan.png").is_file() and "GWAS of 154" in printed
    for step in ("predict", "riskscore"):
        assert json.loads((out / step / "summary.json").read_text())["fitted"], step
        assert TrainConfig.from_yaml(out / step / "run" / "config.yaml").epochs == 2  # --epochs 1: 2 head epochs
    assert not list(tmp_path.glob(".demo*")), "staging folders left behind"
    lines = [line for line in printed.splitlines() if line.strip()]
    assert len(lines) <= 20, printed  # one screen: a line per step and per epoch (Ray's own lines are in demo.log)
    assert "epoch 0:" in printed and "epoch 0:" in (out / "run" / "train.log").read_text()
    assert "epoch 1:" not in (out / "run" / "train.log").read_text()  # --epochs reached the training
    assert "demo: GWAS" in (out / "demo.log").read_text()


def test_qc_config_file_with_flag_override(mini_cohort, tmp_path):
    (tmp_path / "qc.yaml").write_text(yaml.safe_dump({"maf": 0.2, "n_pcs": 5}))
    out = tmp_path / "qc"
    assert main(["qc", "--cohort", str(mini_cohort), "--out", str(out), "--config", str(tmp_path / "qc.yaml"),
                 "--n-pcs", "3"]) == 0
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["maf"] == 0.2 and resolved["n_pcs"] == 3
    variants = pl.read_csv(out / "variant_qc.tsv", separator="\t")
    kept = variants.filter(pl.col("filter") == "PASS")
    assert kept["maf"].min() >= 0.2
    assert len((out / "kept_variants.snplist").read_text().split()) == kept.height
    assert pl.read_csv(out / "pcs.eigenvec", separator="\t").width == 2 + 3


def test_console_script_reports_errors_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "comical", "qc", "--cohort", str(tmp_path / "nowhere"),
                             "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"comical qc: error: --cohort {tmp_path / 'nowhere'}: not a folder"


def test_phewas_command_reuses_a_qc(mini_cohort, mini_pairs, tmp_path, capsys):
    out = tmp_path / "phewas"
    assert main(["phewas", "--cohort", str(mini_cohort), "--qc", str(mini_pairs / "qc"), "--out", str(out),
                 "--p-adjust", "bonferroni", "--diseases", "AD,MS"]) == 0
    assert "IDPs mapped to a disease" in capsys.readouterr().out
    table = pl.read_csv(out / "phewas.tsv", separator="\t")
    assert set(table["disease"]) == {"AD", "MS"} and table.height == 2 * 154
    assert (table["p_adjusted"] == (table["p"] * table.height).clip(upper_bound=1.0)).all()
    assert not (out / "qc").exists()  # the given QC was reused, not recomputed


def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subparsers(sub))


def test_every_flag_has_help_and_a_readable_metavar():
    """`comical CMD --help` explains each flag in a line, config-derived flags included (their help is the config
    field's comment), and names its value plainly (never argparse's `CFG_MODEL__LAYOUT`)."""
    from comical.cli import _parser

    commands = [name for name, _ in _subparsers(_parser())]
    assert {"train", "tune", "gwas", "embed", "bench scaling", "evaluate", "demo"} <= set(commands)
    missing = []
    for command in commands:
        parser = dict(_subparsers(_parser(command.split()[0])))[command]
        parser.format_help()  # renders (a "%" in a help text once broke `comical pairs --help`)
        for action in parser._actions:
            if action.dest == "help" or isinstance(action, argparse._SubParsersAction):
                continue  # a group such as `bench` or `images`: its subcommands are checked
            shown = parser._get_formatter()._format_args(action, action.dest.upper()) if action.nargs != 0 else ""
            if not action.help or "CFG_" in shown or "__" in shown:
                missing.append(f"{command} {action.option_strings or action.dest}: {action.help!r} {shown}")
    assert not missing, missing


def _documented_train_commands() -> list[list[str]]:
    """Every `comical train` line of README.md and docs/ (a `for task in ...` loop's line once per task)."""
    import re
    import shlex
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    commands = []
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = page.read_text()
        loops = dict(re.findall(r"for (\w+) in ([^;]+);", text))
        for line in text.splitlines():
            line = line.split("#")[0].strip()
            if not line.startswith("comical train ") or "--resume" in line:
                continue
            words = shlex.split(line)[1:]
            variables = [w[1:] for w in words if w.startswith("$")] + [w.split("$")[1] for w in words if "/$" in w]
            for value in (loops[variables[0]].split() if variables else [None]):
                commands.append([w.replace(f"${variables[0]}", value) if value else w for w in words])
    return commands


class _ChecksPassed(Exception):
    pass


def test_every_documented_train_command_passes_its_checks_on_the_mini_cohort(image_cohort, mini_pairs, toy_data,
                                                                             tmp_path, monkeypatch):
    """Each `comical train` line of the README and docs, as written, on the mini cohort (with T1/T2 volumes for
    --cohort): it makes its inputs and every check before Ray passes (a task brings its paper's batch size: the
    GEMCONT line once stopped at "--batch-size 4096: larger than a worker's share of the 1400 training subjects")."""
    def stop(config, out, storage, info, say):
        raise _ChecksPassed(config.task)

    monkeypatch.setattr("comical.distributed.run._train_and_evaluate", stop)
    commands = _documented_train_commands()
    tasks = set()
    for k, words in enumerate(commands):
        folders = {"cohort": image_cohort, "pairs": mini_pairs, "toy": toy_data}
        argv = [str(folders.get(w, w)) if i and words[i - 1] in ("--cohort", "--pairs", "--data") else w
                for i, w in enumerate(words)]
        argv = [str(tmp_path / str(k) / w) if i and argv[i - 1] == "--out" else w for i, w in enumerate(argv)]
        with pytest.raises(_ChecksPassed) as passed:
            assert main(argv) is None, argv
        tasks.add(str(passed.value))
    assert {"comical", "gemcont", "momentum-t1t2", "momentum-t1", "momentum-t2", "autoencoder-t1t2", "toy"} <= tasks


def test_every_command_and_flag_is_in_the_manual():
    """docs/ names every command (`comical CMD`) and every one of its flags: the manual keeps up with --help."""
    import re
    from pathlib import Path

    from comical.cli import _parser

    docs = "\n".join(p.read_text() for p in (Path(__file__).resolve().parents[1] / "docs").glob("*.md"))
    missing = []
    for command, _ in _subparsers(_parser()):
        parser = dict(_subparsers(_parser(command.split()[0])))[command]
        if any(not a.option_strings and a.choices and a.dest not in ("help",) and isinstance(a.choices, dict)
               for a in parser._actions):
            continue  # a group such as `bench`: its subcommands are checked
        if f"comical {command}" not in docs:
            missing.append(command)
        missing += [f"{command} {flag}" for a in parser._actions for flag in a.option_strings
                    if flag not in ("-h", "--help") and not re.search(re.escape(flag) + r"(?![\w-])", docs)]
    assert not missing, missing


def test_a_verbose_console_gives_ray_a_file_descriptor(tmp_path, capsys):
    """With --verbose, stdout and stderr go to the console and the log; ray.init calls faulthandler.enable() on
    sys.stderr, which needs a file descriptor (`comical train --verbose` crashed there): the log's."""
    import os

    from comical.data_io.console import logged_console

    with logged_console(tmp_path / "run.log", verbose=True) as say:
        os.write(sys.stderr.fileno(), b"below Python\n")
        print("a library's line")
        say("the command's line")
    log = (tmp_path / "run.log").read_text()
    assert "below Python" in log and "a library's line" in log and "the command's line" in log
    assert "a library's line" in capsys.readouterr().out
