"""How every command joins Ray: the cluster named by RAY_ADDRESS (`ray job submit` sets it), else a new local one.

Ray's own default (`ray.init()` with no address) also attaches to whatever /tmp/ray/ray_current_cluster names;
after a crashed or killed session that file points at a dead head and `ray.init()` retries it for minutes. To
run on a cluster you started yourself, export RAY_ADDRESS=auto (or its address), or submit a job.
"""

from __future__ import annotations

import os


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
