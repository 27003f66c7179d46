"""What `comical simulate --signal K` does to the planted SNP->IDP pairs of the mini cohort (docs/cohort.md's table):
per K, the planted pairs, those from pleiotropic leads, and the median and 90th-percentile R^2 measured in the
written files (tests/test_simulate.py's `_planted_pair_r2`, reused so the table and the test measure alike).

    python benchmarks/signal_dial.py [--seed 0] [--signals 0,1,3,10,30]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_simulate import _planted_pair_r2  # noqa: E402

from comical.data_io.simulate import write_cohort  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--signals", default="0,1,3,10,30")
    args = parser.parse_args()
    print("| K | planted pairs | from pleiotropic leads | median R^2 | 90th percentile R^2 |\n|---|---|---|---|---|")
    for k in (float(v) for v in args.signals.split(",")):
        with tempfile.TemporaryDirectory() as folder:
            write_cohort(folder, preset="mini", seed=args.seed, signal=k)
            r2, planted = _planted_pair_r2(Path(folder))
        print(f"| {k:g} | {len(r2)} | {planted['via_disease'].is_not_null().sum()} | {np.median(r2):.4f} | "
              f"{np.quantile(r2, 0.9):.4f} |")


if __name__ == "__main__":
    main()
