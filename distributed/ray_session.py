"""How every command joins Ray: the cluster named by RAY_ADDRESS (`ray job submit` sets it), else a new local one.

Ray's own default (`ray.init()` with no address) also attaches to whatever /tmp/ray/ray_current_cluster names;
after a crashed or killed session that file points at a dead head and `ray.init()` retries it for minutes. To
run on a cluster you started yourself, export RAY_ADDRESS=auto (or its address), or submit a job.
"""

from __future__ import annotations

import os
from pathlib import Path

from comical.data_io.errors import InputError


def init_ray(*, num_cpus: int | None = None, log_to_driver: bool = True) -> bool:
    """Start or join Ray once per process; `num_cpus` only sizes a local Ray. True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(configure_logging=False, log_to_driver=log_to_driver)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, configure_logging=False,
                 log_to_driver=log_to_driver)
    return True


def shutdown_ray() -> None:
    """Stop the local Ray this process started, about a second sooner than `ray.shutdown()` alone.

    Ray stops its autoscaler monitor after the GCS, and the monitor's SIGTERM handler then waits on the dead GCS for
    the whole 1 s grace before Ray kills it. A local Ray has nothing to autoscale and is being torn down, so the
    monitor is killed first."""
    import psutil
    import ray

    monitor = os.path.join("autoscaler", "_private", "monitor.py")
    for child in psutil.Process().children():
        try:
            if any(arg.endswith(monitor) for arg in child.cmdline()):
                child.kill()
        except psutil.Error:  # gone already, or not ours to read
            pass
    ray.shutdown()


def check_nodes_see(inputs: dict[str, str | Path], outputs: dict[str, str | Path] | None = None) -> list[str]:
    """On a cluster of several nodes, every alive node must see each of `inputs` (what it is -> path) as this
    process does (the same files at the top of the folder) and each folder of `outputs`: a worker on a node that
    does not would fail mid-run, so one line names the node and the path before compute starts. Returns the nodes
    checked (none on one node). Bucket URLs (s3://...) are Ray's to reach, not checked here."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) < 2:
        return []
    inputs = {k: str(v) for k, v in inputs.items() if "://" not in str(v)}
    outputs = {k: str(v) for k, v in (outputs or {}).items() if "://" not in str(v)}
    here = _seen(inputs, outputs)
    probe = ray.remote(num_cpus=0)(_seen)
    reports = {f"{n['NodeManagerAddress']} (id {n['NodeID'][:8]})": probe.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(inputs, outputs)
        for n in nodes}
    checked = []
    for node, report in reports.items():
        try:
            there = ray.get(report, timeout=120)
        except ray.exceptions.TaskUnschedulableError:  # a node just lost, still listed: no worker will go there
            continue
        problem = unseen(here, there, {**inputs, **outputs})
        if problem:
            raise InputError(f"node {node} {problem}: every path a command is given must be at the same path on "
                             "every node (docs/cluster.md)")
        checked.append(node)
    return checked


def _seen(inputs: dict[str, str], outputs: dict[str, str]) -> dict:
    """What this node sees: each input's top-level (name, size) listing (a file: its size), each output's existence
    as a folder; None where the path is absent."""
    def listing(path: Path):
        if path.is_dir():
            return sorted([e.name, e.stat().st_size] for e in os.scandir(path) if e.is_file())
        return path.stat().st_size if path.is_file() else None

    return {**{k: listing(Path(v)) for k, v in inputs.items()},
            **{k: Path(v).is_dir() or None for k, v in outputs.items()}}


def unseen(here: dict, there: dict, paths: dict[str, str]) -> str | None:
    """The first path a node sees otherwise than this process, as words ("cannot see PATH (WHAT)"), or None."""
    for name, mine in here.items():
        if there.get(name) != mine:
            verb = "cannot see" if there.get(name) is None else "sees other files in"
            return f"{verb} {paths[name]} ({name})"
    return None
