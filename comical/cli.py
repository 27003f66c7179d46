"""The `comical` command line: each subcommand parses flags into a config and calls one library function.

    comical simulate --preset mini --seed 0 --out cohort/
    comical qc --cohort cohort/ --out qc/
    comical demo --out demo-output/
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from comical.data_io.errors import InputError


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except InputError as err:
        print(f"comical {args.command}: error: {err}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="comical", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="write a simulated UK-Biobank-like cohort in real file formats")
    p.add_argument("--preset", choices=["mini", "paper"], default="mini")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--force", action="store_true", help="replace an --out folder that holds a different run")
    p.set_defaults(run=_simulate)

    p = sub.add_parser("qc", help="sample/variant QC, LD pruning and genetic PCs of a cohort")
    p.add_argument("--cohort", type=Path, required=True, help="cohort folder (see `comical simulate`)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--config", type=Path, help="YAML of QC settings; flags override it")
    p.add_argument("--force", action="store_true", help="replace an --out folder that holds a different run")
    _add_config_flags(p, _qc_config_class())
    p.set_defaults(run=_qc)

    p = sub.add_parser("demo", help="simulate the mini cohort, then run every step on it")
    p.add_argument("--out", type=Path, default=Path("demo-output"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace an --out folder that holds a different run")
    p.set_defaults(run=_demo)
    return parser


def _qc_config_class():
    from comical.pipelines.qc import QCConfig

    return QCConfig


def _add_config_flags(parser: argparse.ArgumentParser, config_class) -> None:
    """One `--flag` per config field (underscores become dashes); unset flags leave the config alone."""
    for field in dataclasses.fields(config_class):
        parser.add_argument(f"--{field.name.replace('_', '-')}", dest=f"cfg_{field.name}", type=type(field.default),
                            default=None, help=f"(default {field.default})")


def _config_from_args(config_class, args):
    base = config_class.from_yaml(args.config) if args.config else config_class()
    flags = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}
    return dataclasses.replace(base, **flags)


def _simulate(args) -> int:
    from comical.data_io.output_dir import check_output_dir, staged_output_dir
    from comical.data_io.simulate import write_cohort

    run = {"command": "simulate", "preset": args.preset, "seed": args.seed}
    out = check_output_dir(args.out, run, force=args.force)
    start = time.perf_counter()
    with staged_output_dir(out, run) as stage:
        manifest = write_cohort(stage, preset=args.preset, seed=args.seed)
    print(f"simulate: wrote the {args.preset} cohort ({manifest['n_subjects']} subjects, {manifest['n_variants']} "
          f"variants, {manifest['n_idps']} IDPs) to {out} in {time.perf_counter() - start:.1f} s")
    return 0


def _qc(args) -> int:
    from comical.data_io.cohort import load_cohort
    from comical.data_io.output_dir import check_output_dir, staged_output_dir
    from comical.pipelines.qc import QCConfig

    config = _config_from_args(QCConfig, args)
    run = {"command": "qc", "cohort": str(args.cohort.resolve()), "config": config.to_dict()}
    out = check_output_dir(args.out, run, force=args.force, inputs=(args.cohort,))
    cohort = load_cohort(args.cohort)
    with staged_output_dir(out, run) as stage:
        _write_qc(cohort, config, stage, shown_as=out)
    return 0


def _write_qc(cohort, config, stage: Path, *, shown_as: Path) -> None:
    from comical.pipelines.qc import run_qc

    result = run_qc(cohort, config)
    result.write(stage)
    (stage / "config.yaml").write_text(config.to_yaml())
    r = result.report
    print(f"qc: kept {r['samples']['kept']}/{r['samples']['input']} samples and {r['variants']['kept']}/"
          f"{r['variants']['input']} variants ({r['variants']['pruned_in']} after LD pruning), "
          f"{config.n_pcs} PCs -> {shown_as}")


def _demo(args) -> int:
    from comical.data_io.cohort import load_cohort
    from comical.data_io.output_dir import check_output_dir, staged_output_dir
    from comical.data_io.simulate import write_cohort
    from comical.pipelines.qc import QCConfig

    run = {"command": "demo", "seed": args.seed}
    out = check_output_dir(args.out, run, force=args.force)
    with staged_output_dir(out, run) as stage:
        (stage / "cohort").mkdir()
        manifest = write_cohort(stage / "cohort", preset="mini", seed=args.seed)
        print(f"demo: simulated the mini cohort ({manifest['n_subjects']} subjects, {manifest['n_variants']} "
              f"variants) -> {out / 'cohort'}")
        (stage / "qc").mkdir()
        _write_qc(load_cohort(stage / "cohort"), QCConfig(seed=args.seed), stage / "qc", shown_as=out / "qc")
    print(f"demo: done; outputs in {out}")
    return 0
