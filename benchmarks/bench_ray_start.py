"""Benchmark: a local Ray's start and stop, as every command with its own Ray pays them: `ray.shutdown()` alone
against `comical.distributed.ray_session.shutdown_ray()` (which kills Ray's autoscaler monitor first).

    python benchmarks/bench_ray_start.py [--repeats 3]

Each run is a fresh Python process that starts a local Ray as `init_ray` does (2 CPUs, no dashboard), runs two
tasks so workers are up, and times the stop; the two ways are taken in turns, medians printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

RUN = """
import json, time, ray
from comical.distributed.ray_session import init_ray, shutdown_ray
t = time.perf_counter(); init_ray(num_cpus=2, log_to_driver=False); started = time.perf_counter() - t
ray.get([ray.remote(num_cpus=1)(lambda: 0).remote() for _ in range(2)])
t = time.perf_counter(); {stop}; stopped = time.perf_counter() - t
print(json.dumps({{"init": started, "shutdown": stopped}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_USAGE_STATS_ENABLED": "0"}
    ways = {"ray.shutdown()": "ray.shutdown()", "comical shutdown_ray()": "shutdown_ray()"}
    runs: dict[str, list[dict]] = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name, stop in ways.items():
            out = subprocess.run([sys.executable, "-c", RUN.format(stop=stop)], env=env, capture_output=True,
                                 text=True, check=True).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
    print(f"{os.cpu_count()} cores; median of {args.repeats} runs each\n| stop | init s | shutdown s |\n|---|---|---|")
    for name, r in runs.items():
        print(f"| {name} | {statistics.median(x['init'] for x in r):.2f} | "
              f"{statistics.median(x['shutdown'] for x in r):.2f} |")


if __name__ == "__main__":
    main()
