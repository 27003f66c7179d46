"""Runs across several Ray nodes, on one machine: Ray's own multi-node test cluster (`ray.cluster_utils.Cluster`),
each node with its own CPUs, in a subprocess (the suite's other tests share one local Ray in this process)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import polars as pl


def test_gwas_tasks_run_on_two_nodes_and_write_what_one_worker_writes(mini_cohort, tmp_path):
    """`comical gwas --workers 2` on a two-node cluster (RAY_ADDRESS, as `ray job submit` sets it; one CPU a node):
    its blocks ran on both nodes (each task records its node), and the tables equal an in-process one-worker run."""
    script = textwrap.dedent(f"""
        import json, os, sys
        from pathlib import Path

        import ray
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 1, "include_dashboard": False}})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        os.environ["RAY_ADDRESS"] = cluster.address
        from comical.pipelines.statgen import gwas

        original = gwas._block
        nodes = Path({str(tmp_path / "nodes")!r})

        def recorded(*args, **kwargs):  # a Ray task on some node: say which
            import ray as worker_ray
            with open(nodes, "a") as out:
                out.write(worker_ray.get_runtime_context().get_node_id() + "\\n")
            return original(*args, **kwargs)

        gwas._block = recorded
        from comical.cli import main

        code = main(["gwas", "--cohort", {str(mini_cohort)!r}, "--out", {str(tmp_path / "cluster" / "g")!r},
                     "--workers", "2", "--no-plots"])
        ray.shutdown()
        cluster.shutdown()
        print(json.dumps({{"code": code}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["code"] == 0
    ran_on = (tmp_path / "nodes").read_text().split()
    assert len(ran_on) >= 4 and len(set(ran_on)) == 2, ran_on  # every block recorded, on both nodes

    from comical.cli import main

    assert main(["gwas", "--cohort", str(mini_cohort), "--out", str(tmp_path / "local" / "g"), "--no-plots"]) == 0
    names = sorted(p.name for p in (tmp_path / "local").glob("g.*.tsv"))
    assert names and names == sorted(p.name for p in (tmp_path / "cluster").glob("g.*.tsv"))
    for name in names[:5]:
        ours, theirs = (pl.read_csv(tmp_path / run / name, separator="\t", null_values="NA")
                        for run in ("cluster", "local"))
        assert ours.columns == theirs.columns and ours.height == theirs.height
        for column in ours.columns:
            if ours[column].dtype == pl.Float64:  # other block sizes: the last bits may differ
                np.testing.assert_allclose(ours[column].to_numpy(), theirs[column].to_numpy(), rtol=1e-10)
            else:
                assert ours[column].equals(theirs[column])
