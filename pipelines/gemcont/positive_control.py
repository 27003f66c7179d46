"""`comical bench positive-control --method gemcont|rotation` (pipelines/positive_control.py runs them): does GEMCONT
find the planted image latent, as the planted signal grows?

- `gemcont`: per signal K and seed, the mini cohort with T1 volumes (`comical simulate --signal K --images t1`: K
  scales the image latent's effect on grey matter by sqrt(K)), GEMCONT trained on AD's panel (`comical train --task
  gemcont --cohort`), then `comical evaluate gemcont`. The metric: the planted latent's ridge R^2 from the test
  embeddings; the floor: the same architecture untrained; the ceiling: the latent itself (R^2 1); beside them the
  raw voxels (a supervised linear read-out of the volume, fitted on the test subjects) and the planted latent
  variants found at 5e-8 by the embedding GWAS, GEMCONT's and the untrained encoder's.
- `rotation`: paper 001's own simulation (`comical bench gemcont-sim`): the signal is its h_g (in (0, 1]), each
  seed a new population with one training split, GEMCONT with the GWAS-initialised projector as the paper starts it.
  The metric: z's ridge R^2 from the test embeddings; the floor: the untrained encoder; the ceiling: the supervised
  model on z (a reference, not a bound: SCIENCE.md); beside them the raw pixels. Issue 32's bar at h_g 1: GEMCONT at
  least 0.9 times the supervised model.
A cell's cohort and runs are deleted once scored.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from comical.data_io.errors import InputError
from comical.pipelines.positive_control import Control, fmt, share_cell


def _gemcont_cell(work: Path, signal: float, seed: int, settings, epochs: int) -> dict:
    from comical.data_io.simulate import write_cohort
    from comical.distributed.config import TrainConfig
    from comical.distributed.run import train_and_evaluate
    from comical.pipelines.gemcont.evaluate import evaluate_gemcont
    from comical.pipelines.registry import inputs_maker

    shutil.rmtree(work, ignore_errors=True)  # a cell stopped half-way starts again
    (work / "cohort").mkdir(parents=True)
    write_cohort(work / "cohort", preset="mini", seed=seed, signal=signal, images=("t1",), voxel_mm=settings.voxel_mm)
    config = TrainConfig.from_dict({"task": "gemcont", "data": str(work / "run" / "inputs"), "seed": seed,
                                    "epochs": epochs, "engine": {"workers": settings.workers}})
    prepare, prepared_from = inputs_maker("gemcont", work / "cohort", seed=seed, disease="AD")
    train_and_evaluate(config, work / "run", prepare=prepare, prepared_from=prepared_from, epoch_lines=False)
    (work / "evaluation").mkdir()
    m = evaluate_gemcont(work / "run", work / "cohort", work / "evaluation", workers=settings.workers,
                         seed=seed)["methods"]
    r2, floor = m["gemcont"]["latent_r2"], m["random_encoder"]["latent_r2"]
    row = {"latent_r2": r2, "latent_r2_floor": floor, "latent_r2_raw_voxels": m["raw_voxels"]["latent_r2"],
           "latent_r2_share": (r2 - floor) / (1 - floor),
           "latent_r2_share_of_raw_voxels": ((r2 - floor) / (m["raw_voxels"]["latent_r2"] - floor)
                                             if m["raw_voxels"]["latent_r2"] - floor > 0.02 else None),
           "planted_at_5e-8": m["gemcont"].get("planted_at_5e-8"),
           "planted_at_5e-8_floor": m["random_encoder"].get("planted_at_5e-8"),
           "auc": m["gemcont"].get("auc"), "auc_floor": m["random_encoder"].get("auc"),
           "auc_planted_latent": m["planted_latent"].get("auc")}
    shutil.rmtree(work)
    return row


def _gemcont_markdown(summary, settings, epochs: int) -> str:
    lines = [f"GEMCONT positive control: mini cohort, T1 at {settings.voxel_mm:g} mm, AD's panel, {epochs} epochs, "
             f"{settings.workers} worker(s). Mean over seeds; shares with a 95% t interval over seeds [seeds where "
             "defined / seeds]. Latent R^2: 5-fold ridge of the planted image latent from the test embeddings. "
             "Floor: the untrained encoder; ceiling: the latent itself (1); raw voxels: a supervised linear read-out.",
             "", "| signal K | latent R^2: GEMCONT, untrained, raw voxels | share of the lift to 1 | share of the raw "
             "voxels' lift | planted latent variants at 5e-8: GEMCONT, untrained (share of the weight^2) | AD AUC: "
             "GEMCONT, untrained, planted latent |", "|---|---|---|---|---|---|"]
    for r in summary.iter_rows(named=True):
        lines.append(f"| {r['signal']:g} | {fmt(r['latent_r2'])}, {fmt(r['latent_r2_floor'])}, "
                     f"{fmt(r['latent_r2_raw_voxels'])} | {share_cell(r, 'latent_r2_share')} | "
                     f"{share_cell(r, 'latent_r2_share_of_raw_voxels')} | {fmt(r['planted_at_5e-8'], 2)}, "
                     f"{fmt(r['planted_at_5e-8_floor'], 2)} | {fmt(r['auc'])}, {fmt(r['auc_floor'])}, "
                     f"{fmt(r['auc_planted_latent'])} |")
    return "\n".join(lines)


def _rotation_cell(work: Path, signal: float, seed: int, settings, epochs: int) -> dict:
    from comical.pipelines.gemcont.simulation import SimBench, run_benchmark

    shutil.rmtree(work, ignore_errors=True)
    bench = SimBench(h_g_values=(signal,), splits=1, seed=seed, epochs=epochs, projector_init="gwas",
                     n_train=settings.n_train, learning_rate=settings.learning_rate)
    table = run_benchmark("h_g", work, bench=bench, methods=("gemcont", "supervised"), workers=settings.workers,
                          say=lambda _: None)
    r2 = dict(zip(table["method"], table["r2"]))
    first = table.row(0, named=True)
    floor, ceiling = first["r2_untrained"], r2["supervised"]
    row = {"r2": r2["gemcont"], "r2_floor": floor, "r2_raw_pixels": first["r2_raw_pixels"], "r2_ceiling": ceiling,
           "ratio_to_ceiling": r2["gemcont"] / ceiling if ceiling > 0 else None,
           "r2_share": (r2["gemcont"] - floor) / (ceiling - floor) if ceiling - floor > 0.02 else None,
           "best_epoch": dict(zip(table["method"], table["best_epoch"]))["gemcont"],
           "n_train": bench.n_train, "n_test": bench.n_test}
    shutil.rmtree(work)
    return row


def _rotation_check(settings) -> None:
    if not all(0 < k <= 1 for k in settings.signals):
        raise InputError(f"--signal {','.join(f'{k:g}' for k in settings.signals)}: the rotation benchmark's signal "
                         "is its h_g, expected values in (0, 1] like 0.25,0.5,1")


def _rotation_markdown(summary, settings, epochs: int) -> str:
    from comical.distributed.tasks.rotation import RotationTask
    from comical.pipelines.gemcont.simulation import SimBench

    bench, rate = SimBench(), settings.learning_rate or RotationTask.optim_defaults["learning_rate"]
    lines = [f"Rotation benchmark positive control (paper 001's simulation): {settings.n_train:,} training and "
             f"{bench.n_test:,} test subjects per seed, S = {bench.n_variants}, alpha_max {bench.alpha_max:g}, "
             f"{epochs} epochs, learning rate {rate:g} (both methods), GEMCONT's projector "
             "initialised at the GWAS effects. "
             "Ridge R^2 of z from the test embeddings, mean over seeds (each a new population); shares with a 95% t "
             "interval over seeds. Floor: the untrained encoder; ceiling: the supervised model on z (a reference). "
             "Bar (issue 32, h_g 1): GEMCONT / supervised >= 0.9.", "",
             "| h_g | R^2: GEMCONT, untrained, raw pixels, supervised | GEMCONT / supervised | share of the "
             "supervised model's lift |", "|---|---|---|---|"]
    for r in summary.iter_rows(named=True):
        lines.append(f"| {r['signal']:g} | {fmt(r['r2'])}, {fmt(r['r2_floor'])}, {fmt(r['r2_raw_pixels'])}, "
                     f"{fmt(r['r2_ceiling'])} | {share_cell(r, 'ratio_to_ceiling')} | {share_cell(r, 'r2_share')} |")
    return "\n".join(lines)


GEMCONT = Control("GEMCONT (brain volumes)", _gemcont_cell,
                  {"latent_r2_share": "latent R^2 (of the lift to the latent itself)",
                   "latent_r2_share_of_raw_voxels": "latent R^2 (of the raw voxels' lift)"},
                  _gemcont_markdown, epochs=10, reads=("voxel_mm",))
ROTATION = Control("GEMCONT (rotation benchmark)", _rotation_cell,
                   {"r2_share": "R^2 of z (of the supervised model's lift)",
                    "ratio_to_ceiling": "R^2 of z / the supervised model's"},
                   _rotation_markdown, epochs=15, reads=("n_train", "learning_rate"),
                   signal_label="h_g (paper 001's genetic share of z)", check=_rotation_check)
