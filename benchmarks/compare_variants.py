"""Compare COMICAL's token layouts (paper: identity+value in one token; separate: two tokens) and its targets
(onehot, as the paper; soft: identical inputs are positives), trained the same way on one pair store.

    python benchmarks/compare_variants.py --pairs PAIRS/ [--epochs 5] [--workers 2]

Prints a Markdown table of test metrics (best epoch by validation) for the four combinations.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from comical.distributed.config import TrainConfig
from comical.distributed.run import train_and_evaluate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    from comical.distributed.ray_session import init_ray

    init_ray(log_to_driver=False)
    print("| layout | targets | bucket accuracy (chance) | within-bucket accuracy (chance, null) | test loss |")
    print("|---|---|---|---|---|")
    for layout in ("paper", "separate"):
        for targets in ("onehot", "soft"):
            config = TrainConfig.from_dict({"data": str(args.pairs.resolve()), "epochs": args.epochs,
                                            "model": {"layout": layout, "targets": targets},
                                            "engine": {"workers": args.workers, "zero_stage": 2}})
            with tempfile.TemporaryDirectory() as tmp:
                m = train_and_evaluate(config, Path(tmp) / "run")
            print(f"| {layout} | {targets} | {m['bucket_accuracy']:.3f} ({m['bucket_accuracy_chance']:.3f}) | "
                  f"{m['within_bucket_accuracy']:.4f} ({m['within_bucket_accuracy_chance']:.4f}, "
                  f"{m['within_bucket_accuracy_null']:.4f}) | {m['loss']:.3f} |", flush=True)
            print(json.dumps(m))


if __name__ == "__main__":
    main()
