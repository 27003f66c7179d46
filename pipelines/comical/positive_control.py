"""`comical bench positive-control --method comical` (pipelines/positive_control.py runs it): does COMICAL find
SNP-IDP associations that are planted, as the planted signal grows?

Per signal K (`comical simulate --signal K`) and seed, one cell: the mini cohort, its pair store (`--top-n-perc`)
and a null store of the same cohort (`--permute-idps`: IDP values permuted across subjects), COMICAL trained on
each with the same settings, then `comical associate` on each. A cell's row (results.csv):
- within-bucket accuracy above its null, for the run and for the ceiling (the planted-truth model of
  pipelines/comical/ceiling.py on the same test batches), and the share of the ceiling's lift the run reaches;
- the test loss's share of the gap from the identity-only floor to the ceiling;
- AUPRC of the calibrated association test against the planted pairs, beside chance and a GWAS of the same
  candidate pairs on the same test subjects, and the share of the GWAS's lift over chance that COMICAL reaches (the
  planted-truth model has no AUPRC: ceiling.py says why); beside them a GWAS on the training subjects and SNP
  identity alone (the catalog p), neither a bound;
- recall at FDR 5% of the run, of the planted effects themselves and of that GWAS; on the null store, the run's
  discoveries at FDR 5%, its share of p < 0.05 and a Kolmogorov-Smirnov test of its p-values against uniform.
The cell's cohort and stores are deleted once scored.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
from scipy import stats

from comical.pipelines.positive_control import Control, fmt, share_cell

SHARES = {"within_bucket_share": "within-bucket accuracy (of the ceiling's lift)",
          "loss_share": "test loss (of the floor-to-ceiling gap)",
          "auprc_share": "AUPRC (of a GWAS's lift over chance, same test subjects)"}
EPOCHS = 10  # 3 epochs left COMICAL above its identity-only loss floor at K = 30, 10 did not (SCIENCE.md)


def _cell(work: Path, signal: float, seed: int, settings, epochs: int) -> dict:
    from comical.data_io.cohort import load_cohort
    from comical.data_io.simulate import write_cohort
    from comical.data_io.traits import load_trait_map
    from comical.distributed.config import TrainConfig
    from comical.distributed.run import train_and_evaluate
    from comical.pipelines.comical.associations import associate_run
    from comical.pipelines.comical.chain import write_pair_store
    from comical.pipelines.comical.pairs import PairsConfig

    shutil.rmtree(work, ignore_errors=True)  # a cell stopped half-way starts again
    (work / "cohort").mkdir(parents=True)
    write_cohort(work / "cohort", preset="mini", seed=seed, signal=signal)
    cohort = load_cohort(work / "cohort")
    results = {}
    for name, permute in (("real", None), ("null", seed)):
        store = work / f"pairs_{name}"
        store.mkdir()
        write_pair_store(cohort, PairsConfig(top_n_perc=settings.top_n_perc, seed=seed, permute_idps=permute,
                                             max_subjects=settings.max_subjects),
                         load_trait_map(), store, qc_dir=work / "pairs_real" / "qc" if name == "null" else None,
                         phewas_dir=work / "pairs_real" / "phewas" if name == "null" else None, shown_as=store)
        config = TrainConfig.from_dict({"data": str(store), "seed": seed, "epochs": epochs,
                                        "model": {"layout": settings.layout},
                                        "engine": {"workers": settings.workers, "engine": "ddp"}})
        train_and_evaluate(config, work / f"run_{name}", epoch_lines=False)
        results[name] = associate_run(work / f"run_{name}", cohort=work / "cohort")
    truth, null = results["real"]["truth"], results["null"]
    # the null store's p-values themselves, not only its calls: BH at 5% calls nothing on most null sets anyway
    null_p = pl.read_csv(work / "run_null" / "associations.tsv", separator="\t")["p"].drop_nulls().to_numpy()
    m, ceiling = truth["methods"], truth["ceiling"]
    a, loss, power = ceiling["within_bucket_accuracy"], ceiling["loss"], ceiling["association"]
    chance, gwas = m["comical"]["auprc_chance"], m["gwas_test_subjects"]["auprc"]
    row = {"n_candidates": truth["n_candidates"],
           "n_planted": m["comical"]["n_planted"], "n_test_pairs": ceiling["n_test_pairs"],
           "within_bucket_lift": a["model_lift"], "within_bucket_lift_se": a["model_lift_se"],
           "within_bucket_lift_ceiling": a["ceiling_lift"], "within_bucket_lift_ceiling_se": a["ceiling_lift_se"],
           "within_bucket_share": a["share_of_lift"], "loss": loss["model"], "loss_floor": loss["floor"],
           "loss_ceiling": loss["ceiling"], "loss_share": loss["share_of_lift"],
           "auprc": m["comical"]["auprc"], "auprc_chance": chance, "auprc_gwas_test_subjects": gwas,
           # beside it: the GWAS a user would run (training subjects, 7x the test's) and SNP identity alone (the
           # catalog p: planted leads are the strongest SNPs, so it beats chance without any IDP information)
           "auprc_gwas_training_subjects": m["gwas"]["auprc"], "auprc_snp_only": m["snp_only"]["auprc"],
           "auprc_share": ((m["comical"]["auprc"] - chance) / (gwas - chance)
                           if None not in (m["comical"]["auprc"], gwas, chance) and gwas - chance > 1e-9 else None),
           "recall_fdr05": m["comical"]["recall_at_fdr05"], "recall_fdr05_ceiling": power["recall_at_fdr05"],
           "recall_fdr05_gwas_test_subjects": m["gwas_test_subjects"]["recall_at_fdr05"],
           "null_store_calls_fdr05": null["n_fdr05"], "null_store_pairs": null["n_pairs"],
           "null_store_p05_share": float((null_p < 0.05).mean()) if null_p.size else None,
           "null_store_ks_p": float(stats.kstest(null_p, "uniform").pvalue) if null_p.size else None}
    shutil.rmtree(work)
    return row


def _markdown(summary, settings, epochs: int) -> str:
    share = share_cell
    lines = [f"COMICAL positive control: mini cohort, --top-n-perc {settings.top_n_perc:g}"
             + (f", --max-subjects {settings.max_subjects}" if settings.max_subjects else "")
             + f", layout {settings.layout}, {epochs} epochs, {settings.workers} worker(s) (DDP). Mean over seeds, "
             "95% t interval over seeds, [seeds where the share is defined / seeds]. Within-bucket share: the run's "
             "lift above its null over the planted-truth model's (defined where that is 3 SE above 0); loss share: "
             "of the gap from the identity-only floor to the planted-truth model; AUPRC share: of a GWAS's lift "
             "over chance on the same test subjects.", "",
             "| signal K | planted / candidates | within-bucket lift: run, planted truth | within-bucket share | "
             "loss share (gap, nats) | AUPRC: run, GWAS test subj., chance | AUPRC share | recall FDR 5%: run, "
             "planted truth, GWAS | null store: calls, share of p < 0.05, KS p against uniform |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in summary.iter_rows(named=True):
        lines.append(f"| {r['signal']:g} | {fmt(r['n_planted'], 1)} / {fmt(r['n_candidates'], 0)} | "
                     f"{fmt(r['within_bucket_lift'], 4)}, {fmt(r['within_bucket_lift_ceiling'], 4)} | "
                     f"{share(r, 'within_bucket_share')} | {share(r, 'loss_share')} "
                     f"({fmt(r['loss_floor'] - r['loss_ceiling'], 4)}) | {fmt(r['auprc'])}, "
                     f"{fmt(r['auprc_gwas_test_subjects'])}, {fmt(r['auprc_chance'])} | {share(r, 'auprc_share')} | "
                     f"{fmt(r['recall_fdr05'], 2)}, {fmt(r['recall_fdr05_ceiling'], 2)}, "
                     f"{fmt(r['recall_fdr05_gwas_test_subjects'], 2)} | {fmt(r['null_store_calls_fdr05'], 1)}, "
                     f"{fmt(r.get('null_store_p05_share'), 2)}, {fmt(r.get('null_store_ks_p'), 2)} |")
    return "\n".join(lines)


CONTROL = Control("COMICAL", _cell, SHARES, _markdown, EPOCHS, reads=("top_n_perc", "max_subjects", "layout"))
