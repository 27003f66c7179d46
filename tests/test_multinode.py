"""Runs across several Ray nodes, on one machine: Ray's own multi-node test cluster (`ray.cluster_utils.Cluster`),
each node with its own CPUs. One cluster serves both tests: it runs in a subprocess (the suite's other tests share
one local Ray in this process), first a training that loses a node, then a GWAS on the nodes left."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import polars as pl
import pytest

from comical.data_io.ukb_fields import IDPS

GWAS_PHENOTYPES = ",".join(IDPS[:3])
pytestmark = pytest.mark.slow  # a cluster of three Ray nodes and a training: outside `make test-fast`


@pytest.fixture(scope="module")
def cluster_run(tiny_pairs, mini_cohort, tmp_path_factory):
    """The cluster's script: two one-CPU nodes and a head with no CPU, `comical train` with two workers placed one a
    node (`--placement spread`; half a CPU each, so packing would put both on one node), DeepSpeed ZeRO-2, resident
    shards, checkpoints in the run folder every node reads; mid epoch 1 a third node joins and the second is removed without warning (its raylet and
    worker killed). The tiny store (27k pairs) keeps it short. Then `comical gwas --workers 2` on the two nodes left, each task recording its node."""
    from conftest import TRAIN_ARGS

    work = tmp_path_factory.mktemp("cluster")
    script = textwrap.dedent(f"""
        import json, os, threading, time
        from pathlib import Path

        import ray
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 0, "include_dashboard": False}})
        cluster.add_node(num_cpus=1)
        second = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        os.environ["RAY_ADDRESS"] = cluster.address
        from comical.cli import main
        from comical.pipelines.statgen import gwas

        work = Path({str(work)!r})
        out = work / "run"
        status = {{}}
        thread = threading.Thread(target=lambda: status.setdefault("rc", main(
            ["train", "--pairs", {str(tiny_pairs)!r}, "--out", str(out), *{TRAIN_ARGS!r}, "--placement", "spread"])))
        thread.start()
        removed = False
        deadline = time.time() + 300
        while not removed and time.time() < deadline and thread.is_alive():
            if (out / "metrics.jsonl").is_file():  # epoch 0 is checkpointed; epoch 1 runs (about a second)
                cluster.add_node(num_cpus=1)
                cluster.remove_node(second, allow_graceful=False)
                removed = True
            time.sleep(0.2)
        thread.join(timeout=600)

        original = gwas._block

        def recorded(*args, **kwargs):  # a Ray task on some node: say which
            import ray as worker_ray
            with open(work / "gwas_nodes", "a") as f:
                f.write(worker_ray.get_runtime_context().get_node_id() + "\\n")
            return original(*args, **kwargs)

        from comical.distributed.ray_session import check_nodes_see, init_ray, shutdown_ray

        init_ray()  # the training's Ray session ended with it
        checked = check_nodes_see({{"the pair store": {str(tiny_pairs)!r}}}, {{"the work folder": str(work)}})
        shutdown_ray()
        gwas._block = recorded
        gwas_rc = main(["gwas", "--cohort", {str(mini_cohort)!r}, "--pheno-name", {GWAS_PHENOTYPES!r}, "--out",
                        str(work / "cluster" / "g"), "--workers", "2", "--no-plots"])
        ray.shutdown()
        cluster.shutdown()
        print(json.dumps({{"train_rc": status.get("rc"), "removed": removed, "gwas_rc": gwas_rc,
                          "checked": len(checked)}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return work, json.loads(result.stdout.strip().splitlines()[-1]), result.stdout


# The same training uninterrupted (`comical train --pairs TINY --workers 2 --zero-stage 2 --epochs 3 --batch-size
# 1024` on a local Ray, 2026-12-07): the seed fixes the run, so a restarted one must end here too.
PINNED_TEST = {"loss": 5.925091743469238, "within_bucket_accuracy": 0.12339622641509435,
               "within_bucket_accuracy_null": 0.12235849056603773, "bucket_accuracy_chance": 0.1534354040757665,
               "top1_accuracy": 0.12339622641509435, "n_test_pairs": 2650}
PINNED_LAST_VAL_LOSS = 5.851113057034957


def test_a_node_lost_mid_training_resumes_on_the_rest_with_the_same_result(cluster_run):
    """The console says what happened in one line, Ray Train restarts from epoch 0's checkpoint on the nodes left,
    and the run ends as the uninterrupted run did (the pinned metrics above)."""

    work, outcome, console = cluster_run
    assert outcome["train_rc"] == 0 and outcome["removed"], console[-3000:]
    failed = [line for line in console.splitlines() if line.startswith("train: worker ")]
    assert failed and "restarts from the last checkpoint" in failed[0], console
    out = work / "run"
    test = json.loads((out / "test_metrics.json").read_text())
    for key, value in PINNED_TEST.items():
        assert test[key] == pytest.approx(value, rel=1e-6), key
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in epochs] == [0, 1, 2]
    assert epochs[-1]["val_loss"] == pytest.approx(PINNED_LAST_VAL_LOSS, rel=1e-6)
    assert json.loads((out / "run.json").read_text())["state"] == "done"
    from comical.distributed.config import TrainConfig

    config = TrainConfig.from_yaml(out / "config.yaml")
    assert config.engine.zero_stage == 2 and config.engine.workers == 2 and config.engine.placement == "spread"


def test_gwas_tasks_run_on_two_nodes_and_write_what_one_worker_writes(cluster_run, mini_cohort):
    """`comical gwas --workers 2` on the cluster (RAY_ADDRESS, as `ray job submit` sets it): its blocks ran on both
    nodes, and the tables equal an in-process one-worker run's."""
    from comical.cli import main

    work, outcome, _ = cluster_run
    assert outcome["gwas_rc"] == 0
    ran_on = (work / "gwas_nodes").read_text().split()
    assert len(ran_on) >= 4 and len(set(ran_on)) == 2, ran_on  # every block recorded, on both nodes
    assert main(["gwas", "--cohort", str(mini_cohort), "--pheno-name", GWAS_PHENOTYPES, "--out",
                 str(work / "local" / "g"), "--no-plots"]) == 0
    names = sorted(p.name for p in (work / "local").glob("g.*.tsv") if not p.name.endswith(".clumps.tsv"))
    assert len(names) == 3 and names == sorted(p.name for p in (work / "cluster").glob("g.*.tsv")
                                               if not p.name.endswith(".clumps.tsv"))
    for name in names:
        ours, theirs = (pl.read_csv(work / run / name, separator="\t", null_values="NA")
                        for run in ("cluster", "local"))
        assert ours.columns == theirs.columns and ours.height == theirs.height
        for column in ours.columns:
            if ours[column].dtype == pl.Float64:  # other block sizes: the last bits may differ
                np.testing.assert_allclose(ours[column].to_numpy(), theirs[column].to_numpy(), rtol=1e-10)
            else:
                assert ours[column].equals(theirs[column])


def test_every_node_is_asked_whether_it_sees_the_paths(cluster_run):
    """`check_nodes_see` ran a probe on each of the three alive nodes (the head, the first node and the one that
    joined); training runs the same check before its workers start, and passed it."""
    _, outcome, _ = cluster_run
    assert outcome["checked"] == 3


def test_a_node_that_sees_a_path_otherwise_is_named_with_the_path():
    from comical.distributed.ray_session import _seen, unseen

    here = _seen({"the data": "/usr/bin", "a file": "/etc/hostname"}, {"the out folder": "/tmp"})
    paths = {"the data": "/usr/bin", "a file": "/etc/hostname", "the out folder": "/tmp"}
    assert here["the data"] and here["the out folder"] is True
    assert unseen(here, dict(here), paths) is None
    assert unseen(here, here | {"the data": None}, paths) == "cannot see /usr/bin (the data)"
    assert unseen(here, here | {"the data": here["the data"][:-1]}, paths) == "sees other files in /usr/bin (the data)"
    assert unseen(here, here | {"the out folder": None}, paths) == "cannot see /tmp (the out folder)"
