"""`comical demo`: simulate the mini cohort, then QC, PheWAS, pairs, training, association tests against planted
truth, and a GWAS of the IDPs, printing one line per step with each metric beside its chance level."""

from __future__ import annotations

from functools import partial
from pathlib import Path


DEMO_EPOCHS = 5  # COMICAL's: its bucket accuracy reaches 1 in the first; the rest show the loss settle
DEMO_HEAD_EPOCHS = 10  # the heads' best epoch came at 2-5 of 15 on the mini cohort (lr 3e-3); fewer with --epochs
IMAGE_VOXEL_MM = 8.0  # the demo's volumes: 19 x 24 x 20 voxels, so GEMCONT trains in a minute or two on 2 cores


def run_demo(out: Path, *, seed: int = 0, force: bool = False, verbose: bool = False, images: bool = False,
             epochs: int = DEMO_EPOCHS) -> None:
    """Every step on the simulated mini cohort, into `out` (staged, renamed into place when all succeed).

    The console shows a line per step (and per training epoch); everything else goes to `out/demo.log`. With
    `images`, the cohort gets T1/T2 volumes and GEMCONT trains on them after the COMICAL steps.
    """
    from comical.data_io.console import logged_console
    from comical.data_io.cohort import load_cohort
    from comical.data_io.output_dir import check_output_dir, staged_output_dir
    from comical.data_io.simulate import write_cohort
    from comical.data_io.traits import load_trait_map
    from comical.distributed.config import TrainConfig
    from comical.distributed.ray_session import init_ray, shutdown_ray
    from comical.distributed.run import train_and_evaluate
    from comical.distributed.task import get_task
    from comical.pipelines.comical.associations import associate_run, truth_summary
    from comical.pipelines.statgen.gwas import run_gwas, tables_from_cohort
    from comical.pipelines.comical.chain import write_pair_store
    from comical.pipelines.comical.pairs import PairsConfig

    run = {"command": "demo", "seed": seed, **({"images": True} if images else {}),
           **({"epochs": epochs} if epochs != DEMO_EPOCHS else {})}
    out = check_output_dir(out, run, force=force)
    with staged_output_dir(out, run) as stage, logged_console(stage / "demo.log", verbose=verbose) as say:
        started = init_ray()  # one local Ray for training and the GWAS, stopped while its logs still go to demo.log
        (stage / "cohort").mkdir()
        manifest = write_cohort(stage / "cohort", preset="mini", seed=seed, images=("t1", "t2") if images else (),
                                voxel_mm=IMAGE_VOXEL_MM)
        with_images = f", T1 and T2 volumes at {IMAGE_VOXEL_MM:g} mm" if images else ""
        say(f"demo: simulated the mini cohort ({manifest['n_subjects']} subjects, {manifest['n_variants']} "
              f"variants{with_images}) -> {out / 'cohort'}")
        cohort = load_cohort(stage / "cohort")
        (stage / "pairs").mkdir()
        manifest = write_pair_store(cohort, PairsConfig(top_n_perc=5, seed=seed), load_trait_map(),
                                    stage / "pairs", qc_dir=None, phewas_dir=None, shown_as=out / "pairs")
        say(f"demo: {sum(s['pairs'] for s in manifest['splits'].values()):,} SNP-IDP pairs at --top-n-perc 5 "
              f"-> {out / 'pairs'}")
        config = TrainConfig.from_dict({"data": str(stage / "pairs"), "seed": seed, "epochs": epochs,
                                        "engine": {"workers": 2, "zero_stage": 2}})
        test = train_and_evaluate(config, stage / "run", verbose=verbose)
        say(f"demo: trained COMICAL (Ray Train, 2 workers, DeepSpeed ZeRO-2): {get_task('comical').summary(test)} "
              f"-> {out / 'run'}")
        assoc = associate_run(stage / "run", cohort=stage / "cohort")
        say(f"demo: calibrated association test: {assoc['n_fdr05']} of {assoc['n_pairs']} SNP-IDP pairs at FDR 5%; "
              f"{truth_summary(assoc['truth'])} -> {out / 'run' / 'truth_score.json'}")
        (stage / "gwas").mkdir()
        summary = run_gwas(partial(tables_from_cohort, stage / "cohort", binary=False, pheno_names=None,
                                   covar_names=None), stage / "gwas" / "idps", workers=2)
        hits = {name: info["hits"] for name, info in summary["phenotypes"].items() if info["hits"]}
        lambdas = [info["lambda_gc"] for info in summary["phenotypes"].values()]
        say(f"demo: GWAS of {len(lambdas)} IDPs x {summary['n_variants']} variants (Ray tasks): median lambda_GC "
              f"{sorted(lambdas)[len(lambdas) // 2]:.3f}, {sum(hits.values())} hits at 5e-8 in {len(hits)} IDPs "
              f"-> {out / 'gwas'} (idps.manhattan.png)")
        if images:
            from comical.pipelines.registry import inputs_maker

            config = TrainConfig.from_dict({"task": "gemcont", "data": str(stage / "gemcont" / "inputs"), "seed": seed,
                                            "epochs": 3, "engine": {"workers": 2}})
            prepare, prepared_from = inputs_maker("gemcont", stage / "cohort", seed=seed, disease="AD")
            test = train_and_evaluate(config, stage / "gemcont", verbose=verbose, prepared_from=prepared_from,
                                      prepare=prepare)
            say(f"demo: trained GEMCONT on T1 volumes streamed by Ray Data (2 workers, DeepSpeed): "
                f"{get_task('gemcont').summary(test)} -> {out / 'gemcont'}")
            from comical.pipelines.gemcont.evaluate import evaluate_gemcont, summary_line

            (stage / "gemcont_eval").mkdir()
            evaluation = evaluate_gemcont(stage / "gemcont", stage / "cohort", stage / "gemcont_eval", workers=2)
            say(f"demo: evaluated GEMCONT (embedding GWAS, latent, AD AUC; each beside a random encoder): "
                f"{summary_line(evaluation)} -> {out / 'gemcont_eval'}")
            config = TrainConfig.from_dict({"task": "momentum-t1t2", "data": str(stage / "momentum" / "inputs"),
                                            "seed": seed, "epochs": 2, "engine": {"workers": 2}})
            prepare, prepared_from = inputs_maker("momentum-t1t2", stage / "cohort", seed=seed)
            test = train_and_evaluate(config, stage / "momentum", verbose=verbose, prepared_from=prepared_from,
                                      prepare=prepare)
            say(f"demo: trained the T1/T2 momentum model (EMA key towers, a queue shared by 2 workers): "
                f"{get_task('momentum-t1t2').summary(test)} -> {out / 'momentum'}")
        from comical.pipelines.downstream.heads import (HeadSettings, predict_line, predict_outcomes, risk_scores,
                                                  riskscore_line)

        # a quicker look (--epochs under the default) shortens the heads' training in step: 2 head epochs per epoch
        heads = HeadSettings(epochs=min(DEMO_HEAD_EPOCHS, 2 * epochs), seed=seed, epoch_lines=False)
        summary = predict_outcomes(stage / "run", stage / "cohort", stage / "predict", settings=heads, say=print,
                                   verbose=verbose)
        say(f"demo: outcome prediction from the frozen encoders (Ray Train heads; raw-input baseline): "
            f"{predict_line(summary)} -> {out / 'predict'}")
        summary = risk_scores(stage / "run", stage / "cohort", stage / "riskscore", settings=heads, say=print,
                              verbose=verbose)
        say(f"demo: ePRS risk scores from the frozen encoders: {riskscore_line(summary)} -> {out / 'riskscore'}")
        if started:
            shutdown_ray()
    print(f"demo: done; outputs in {out} (everything else the steps printed: {out / 'demo.log'})")
