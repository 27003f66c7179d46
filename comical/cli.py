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

from comical.data_io.errors import InputError, RunFailed


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # only the command that runs imports its config module: `comical gwas --help` starts in well under 0.5 s
    parser = _parser(next((a for a in argv if not a.startswith("-")), None))
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except InputError as err:
        print(f"comical {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RunFailed as err:
        print(f"comical {args.command}: error: {err}", file=sys.stderr)
        return 1


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command's parser; the config-derived flags only for `command` (their modules import slowly)."""
    parser = argparse.ArgumentParser(prog="comical", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="write a simulated UK-Biobank-like cohort in real file formats")
    p.add_argument("--preset", choices=["mini", "paper"], default="mini",
                   help="mini: 2,000 subjects, 3,000 variants (tests, demo); paper: 40,426 subjects, 20,000 variants")
    p.add_argument("--seed", type=int, default=0, help="the simulation's seed: the same seed writes the same files")
    p.add_argument("--out", type=Path, required=True, help="the cohort folder to write")
    p.add_argument("--force", action="store_true", help="replace an --out folder that holds a different run")
    p.add_argument("--images", type=_modalities, default=(),
                   help="also write 3-D brain volumes of these modalities, comma-separated: t1,t2")
    p.add_argument("--voxel-mm", type=float, default=4.0, help="voxel size of the volumes (mm; default 4)")
    p.add_argument("--signal", type=float, default=1.0, metavar="K",
                   help="how much is planted: SNP->IDP and image effects x sqrt(K), planted pairs and working "
                        "memory's genetic and regional shares x K (default 1: the default cohort; 0: none)")
    p.add_argument("--idp-h2", type=float, default=0.0, metavar="H",
                   help="add a polygenic part that is H of each IDP's variance (UK Biobank-like: 0.2-0.5; default 0)")
    p.set_defaults(handler=_simulate)

    p = sub.add_parser("qc", help="sample/variant QC, LD pruning and genetic PCs of a cohort")
    p.add_argument("--cohort", type=Path, required=True, help="cohort folder (see `comical simulate`)")
    p.add_argument("--out", type=Path, required=True, help="folder for the QC tables, kept-variant list and PCs")
    p.add_argument("--config", type=Path, help="YAML of QC settings; flags override it")
    p.add_argument("--force", action="store_true", help="replace an --out folder that holds a different run")
    _add_keep_extract(p)
    if command == "qc":
        _add_config_flags(p, _config_class("statgen.qc", "QCConfig"))
    p.set_defaults(handler=_qc)

    p = sub.add_parser("phewas", help="every IDP against every pair-making disease; the IDP -> disease map")
    p.add_argument("--cohort", type=Path, required=True, help="cohort folder (see `comical simulate`)")
    p.add_argument("--out", type=Path, required=True, help="folder for phewas.tsv and the IDP -> disease map")
    p.add_argument("--qc", type=Path, help="a `comical qc` output to reuse (default: run QC first)")
    p.add_argument("--config", type=Path, help="YAML of PheWAS settings; flags override it")
    p.add_argument("--force", action="store_true", help="replace an --out folder that holds a different run")
    if command == "phewas":
        _add_config_flags(p, _config_class("statgen.phewas", "PhewasConfig"))
    p.set_defaults(handler=_phewas)

    p = sub.add_parser("pairs", help="disease-mediated SNP-IDP pairs as a Parquet pair store")
    p.add_argument("--cohort", type=Path, required=True, help="cohort folder (see `comical simulate`)")
    p.add_argument("--out", type=Path, required=True, help="the pair store to write (Parquet shards, manifest.json)")
    p.add_argument("--qc", type=Path, help="a `comical qc` output to reuse (default: run QC)")
    p.add_argument("--phewas", type=Path, help="a `comical phewas` output to reuse (default: run PheWAS)")
    p.add_argument("--trait-map", type=Path, help="CSV disease,trait,efo_uri mapping catalog traits to diagnoses")
    p.add_argument("--config", type=Path, help="YAML of pair settings; flags override it")
    p.add_argument("--force", action="store_true", help="replace an --out folder that holds a different run")
    if command == "pairs":
        _add_config_flags(p, _config_class("comical.pairs", "PairsConfig"))
    p.set_defaults(handler=_pairs)

    p = sub.add_parser("train", help="train a model (COMICAL by default) with Ray Train (+ DeepSpeed)")
    p.add_argument("--pairs", "--data", dest="data", type=Path,
                   help="the task's input: for COMICAL a pair store (`comical pairs`)")
    p.add_argument("--cohort", type=Path, help="GEMCONT: a cohort with images; its inputs are made into OUT/inputs")
    p.add_argument("--disease", default="AD", help="GEMCONT: the disease whose variant panel the genotypes use")
    p.add_argument("--out", type=Path, required=True, help="the run folder")
    p.add_argument("--config", type=Path, help="YAML of a TrainConfig (nested model/optim/engine); flags override")
    if command == "train":
        _add_config_flags(p, _train_config_class(), keys=_TRAIN_KEYS)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--force", action="store_true", help="replace an --out folder that holds a different run")
    p.add_argument("--verbose", action="store_true", help="show Ray's worker logs and warnings (always in train.log)")
    p.set_defaults(handler=_train)

    p = sub.add_parser("tune", help="Ray Tune ASHA sweep over training (the paper's Table 1 space)")
    p.add_argument("--pairs", type=Path, help="a pair store (`comical pairs`)")
    p.add_argument("--space", default="table1", help="search space: table1 (shipped) or a YAML file")
    p.add_argument("--num-samples", type=int, default=10, help="trials to sample")
    p.add_argument("--out", type=Path, help="the sweep folder")
    p.add_argument("--max-epochs", type=int, default=5, help="epochs of a trial that ASHA never stops")
    p.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train workers of each trial")
    p.add_argument("--gpus-per-worker", type=int, default=0, help="0: CPU workers; 1: one GPU each")
    p.add_argument("--config", type=Path, help="YAML TrainConfig for the settings the space does not sample")
    p.add_argument("--resume", type=Path, metavar="DIR", help="continue the interrupted sweep in DIR")
    p.add_argument("--force", action="store_true", help="replace an --out folder that holds a different sweep")
    p.add_argument("--verbose", action="store_true", help="show Tune's tables and Ray's logs (always in tune.log)")
    p.set_defaults(handler=_tune)

    p = sub.add_parser("gwas", help="per-variant GWAS as Ray tasks (plink2 --glm linear/logistic), multi-trait test")
    p.add_argument("--bfile", type=Path, help="PLINK 1 fileset prefix (with --pheno)")
    p.add_argument("--pfile", type=Path, help="plink2 .pgen/.pvar/.psam prefix: ALT dosages (with --pheno)")
    p.add_argument("--bgen", type=Path, help="BGEN 1.2/1.3 file, REF first (UK Biobank; plink2 --bgen F ref-first): "
                   "dosages of the second allele (with --pheno)")
    p.add_argument("--sample", type=Path, help="the BGEN's Oxford .sample file (default: FILE.sample)")
    p.add_argument("--pheno", type=Path, help="phenotypes: plink2 `#FID IID` file, or eid-keyed CSV/TSV/Parquet")
    p.add_argument("--covar", type=Path, help="covariates, same formats (default: intercept only)")
    p.add_argument("--pheno-name", help="comma-separated phenotype columns (default: all)")
    p.add_argument("--covar-name", help="comma-separated covariate columns (default: all; cohort: age,sex,PC1-10)")
    p.add_argument("--cohort", type=Path, help="a cohort folder: its IDPs as phenotypes (--binary: its diagnoses)")
    p.add_argument("--binary", action="store_true", help="logistic regression (0/1 or plink 1/2 case-control)")
    p.add_argument("--multi-trait", type=Path, metavar="EMBEDDINGS",
                   help="eid-keyed table of embedding dims: one joint likelihood-ratio test per variant")
    p.add_argument("--mt-pcs", type=int, help="multi-trait: project the embeddings on their top D PCs first")
    p.add_argument("--rank-normalise", action="store_true", help="multi-trait: rank-based inverse normal transform")
    p.add_argument("--out", type=Path, required=True, help="output prefix: PREFIX.<phenotype>.tsv, PREFIX.summary.json")
    p.add_argument("--workers", type=int, default=1,
                   help="CPUs on a local machine: Ray tasks at a time; 1 runs in this process without Ray")
    p.add_argument("--block-size", type=int, help="variants per task (default: about 4 per worker, at most 2048)")
    p.add_argument("--no-plots", action="store_true", help="skip the Manhattan/QQ PNGs")
    p.add_argument("--out-format", choices=["tsv", "tsv.gz", "parquet"], default="tsv",
                   help="per-phenotype tables: TSV, bgzip-compatible TSV (GWAS-SSF), or Parquet")
    p.add_argument("--no-clump", action="store_true", help="skip LD clumping of the hits")
    p.add_argument("--clump-p1", type=float, default=5e-8, help="index-variant p threshold (paper 001: 5e-8)")
    p.add_argument("--clump-p2", type=float, default=1e-2, help="p threshold for variants a clump may take")
    p.add_argument("--clump-r2", type=float, default=0.05, help="r^2 at which a variant joins a clump (paper 001)")
    p.add_argument("--clump-kb", type=float, default=5000, help="clump window in kb (paper 001: 5 Mb)")
    _add_keep_extract(p)
    p.set_defaults(handler=_gwas)

    p = sub.add_parser("images", help="bring users' brain images in")
    images = p.add_subparsers(dest="images", required=True)
    p = images.add_parser("import", help="NIfTI volumes into a cohort's image store (Ray tasks, resumable)")
    p.add_argument("--t1", required=True, metavar="PATTERN",
                   help="each subject's T1 file, with {eid}: '/data/{eid}/T1/T1_brain_to_MNI.nii.gz'")
    p.add_argument("--t2", metavar="PATTERN", help="each subject's T2 (FLAIR) file, with {eid}")
    p.add_argument("--voxel-mm", type=float, metavar="MM",
                   help="resample every volume to MM isotropic voxels (default: keep the first volume's grid and "
                        "refuse volumes on another)")
    p.add_argument("--atlas", type=Path, metavar="FILE.nii.gz", help="a label atlas, resampled to the grid")
    p.add_argument("--atlas-labels", type=Path, metavar="FILE.csv", help="the atlas's labels: columns label, idp")
    p.add_argument("--subjects", type=Path, metavar="FILE",
                   help="eids to import, one a line or a CSV with an eid column (default: the eids of "
                        "covariates.csv in the folder above --out)")
    p.add_argument("--out", type=Path, required=True, metavar="COHORT/images", help="the image store to write")
    p.add_argument("--workers", type=int, metavar="N", help="CPUs of the local Ray (default: all)")
    p.set_defaults(handler=_images_import)

    p = sub.add_parser("cohort", help="bring users' tables and genotypes in")
    cohort = p.add_subparsers(dest="cohort_verb", required=True)
    p = cohort.add_parser("build", help="a UK Biobank showcase export and genotypes into a cohort folder")
    p.add_argument("--showcase", type=Path, required=True, metavar="FILE.csv",
                   help="the showcase export: an eid column and FIELD-INSTANCE.ARRAY columns (25782-2.0)")
    p.add_argument("--genotypes", type=Path, required=True, metavar="PREFIX|FILE.bgen",
                   help="a .bgen, or the prefix of a .pgen/.pvar/.psam or .bed/.bim/.fam fileset (linked, not copied)")
    p.add_argument("--sample", type=Path, metavar="FILE.sample", help="the BGEN's .sample (default: beside it)")
    p.add_argument("--catalog", type=Path, required=True, metavar="FILE.tsv",
                   help="the GWAS Catalog association download (copied in as gwas_catalog.tsv)")
    p.add_argument("--map", type=Path, metavar="FILE.yaml",
                   help="which showcase field fills which column; sections given replace the default's "
                        "(data_io/resources/showcase_map.yaml)")
    p.add_argument("--instance", type=int, metavar="I",
                   help="the visit of fields given by number (default 2, the imaging visit)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="the cohort folder to write")
    p.add_argument("--force", action="store_true", help="replace a previous run in OUT")
    p.set_defaults(handler=_cohort_build)

    p = sub.add_parser("bench", help="benchmarks users run on their own cluster")
    bench = p.add_subparsers(dest="bench", required=True)
    p = bench.add_parser("scaling", help="training pairs/s and time per epoch as Ray Train workers grow")
    p.add_argument("--pairs", type=Path, required=True, help="a pair store (`comical pairs`)")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts, e.g. 1,2,4,8")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--engine", choices=["deepspeed", "ddp"], default="deepspeed",
                   help="deepspeed, or ddp (plain torch DistributedDataParallel)")
    p.add_argument("--zero-stage", type=int, choices=[0, 1, 2, 3], default=2, help="DeepSpeed ZeRO stage (default 2)")
    p.add_argument("--epochs", type=int, default=3, help="the first is warm-up; later epochs are measured")
    p.add_argument("--batch-size", type=int, default=4096, help="global batch (the same at every worker count)")
    p.add_argument("--out", type=Path, required=True, help="folder for scaling.csv, scaling.md, scaling.png")
    p.set_defaults(handler=_bench_scaling)
    p = bench.add_parser("gemcont-sim", help="paper 001's simulation benchmark (Fig. 2): rotated characters, four "
                                             "methods, one sweep")
    p.add_argument("--sweep", choices=["n_train", "h_g", "alpha_max"], required=True,
                   help="the parameter varied; the others stay at their defaults")
    p.add_argument("--quick", action="store_true", help="tiny sizes, 2 values x 2 splits x 1 epoch (a smoke run)")
    p.add_argument("--methods", default="gemcont,simclr,vae,supervised", help="comma-separated subset")
    p.add_argument("--splits", type=int, help="training splits (default 5; quick 2)")
    p.add_argument("--epochs", type=int, help="epochs per training (default 15; quick 1)")
    p.add_argument("--n-test", type=int, help="fixed test set size (default 10,000; the paper 100K)")
    p.add_argument("--n-train-values", help="comma-separated training sizes of the n_train sweep")
    p.add_argument("--h-g-values", metavar="H,H,...", help="comma-separated heritabilities of the h_g sweep (0-1)")
    p.add_argument("--n-train", type=int, metavar="N",
                   help="training subjects while another parameter is swept (default 5,000; quick 400)")
    p.add_argument("--projector-init", choices=["random", "gwas"], default="random",
                   help="GEMCONT's genotype projector: random, or its first unit at the training split's GWAS "
                        "effects of z, as paper 001 starts it (default random)")
    p.add_argument("--learning-rate", type=float, metavar="X",
                   help="every method's AdamW learning rate (default: paper 001's 3e-4)")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers per training")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--out", type=Path, required=True, help="folder for results.csv, results.md, results.png")
    p.add_argument("--reuse", type=Path, help="a finished sweep's --out of the same sizes: its rows of a shared "
                                              "setting (the defaults) are copied, not trained again")
    p.add_argument("--force", action="store_true", help="replace an --out folder that holds a different run")
    p.set_defaults(handler=_bench_gemcont_sim)
    p = bench.add_parser("positive-control", help="does a method find what is planted as the planted signal grows "
                                                  "(simulate --signal)? shares of each ceiling's lift")
    from comical.pipelines.registry import CONTROLS

    p.add_argument("--method", choices=list(CONTROLS), default="comical",
                   help="COMICAL (pair stores), GEMCONT (brain volumes), rotation (paper 001's benchmark), CGNI, "
                        "T1/T2 momentum (default comical)")
    p.add_argument("--signal", default="1,3,10,30", metavar="K,K,...",
                   help="comma-separated signal dials (default 1,3,10,30; rotation: h_g values in (0, 1])")
    p.add_argument("--seeds", type=int, default=3, metavar="N", help="cohorts per signal, seeds 0..N-1 (default 3)")
    p.add_argument("--epochs", type=int, metavar="N",
                   help="epochs per training (default: the method's; docs/positive-controls.md)")
    p.add_argument("--top-n-perc", type=float, default=5.0, metavar="X",
                   help="comical: the pair stores' --top-n-perc (default 5)")
    p.add_argument("--max-subjects", type=int, metavar="N",
                   help="comical: the pair stores' --max-subjects (default all)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="Ray Train workers per training (default 1)")
    p.add_argument("--layout", choices=["paper", "separate"], default="paper",
                   help="comical: the token layout, as `train --layout` (default paper)")
    p.add_argument("--voxel-mm", type=float, default=8.0, metavar="X",
                   help="gemcont, cgni, momentum: the simulated volumes' voxel size (default 8)")
    p.add_argument("--n-train", type=int, default=5000, metavar="N",
                   help="rotation: training subjects per seed (default 5,000)")
    p.add_argument("--learning-rate", type=float, metavar="X",
                   help="rotation: both methods' AdamW learning rate (default: paper 001's 3e-4)")
    p.add_argument("--preset", choices=["mini", "paper"], default="mini",
                   help="cgni: the simulated cohort (default mini; its 246 subjects in the two groups are too few "
                        "for the CNN: docs/positive-controls.md)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="folder for results.csv, results.md, results.png (resumes the cells already there)")
    p.set_defaults(handler=_bench_positive_control)

    p = sub.add_parser("associate", help="association p-values of SNP-IDP pairs from a trained run's test split")
    p.add_argument("--run", type=Path, required=True, help="a `comical train` run folder")
    p.add_argument("--test", choices=["calibrated", "paper"], default="calibrated",
                   help="calibrated: exact Poisson-binomial against each query's null (default); paper: section 2.6's "
                        "chi-square, for reproduction (not calibrated)")
    p.add_argument("--cohort", type=Path, help="the simulated cohort, to score against its planted truth "
                                               "(default: the cohort the pair store was made from)")
    p.set_defaults(handler=_associate)

    p = sub.add_parser("embed", help="per-subject SNP and IDP embeddings from a trained run's frozen encoders")
    p.add_argument("--run", type=Path, required=True, help="a `comical train` run folder")
    p.add_argument("--cohort", type=Path, required=True, help="the cohort the run was trained on")
    p.add_argument("--out", type=Path, required=True, help="a .parquet file")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(handler=_embed)

    for name, help_text in (("predict", "the 11 outcomes of paper 000 (Figs. 5-6) from a run's frozen encoders, beside "
                                        "the same heads on the raw inputs"),
                            ("riskscore", "ePRS risk scores of paper 000 (Table 3, Algorithm 2) from a run's frozen "
                                          "encoders, beside the raw inputs")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--run", type=Path, required=True, help="a `comical train` run folder (COMICAL or GEMCONT)")
        p.add_argument("--cohort", type=Path, required=True, help="the cohort the run's pairs came from")
        p.add_argument("--out", type=Path, required=True, help="folder for the tables, figures and head runs")
        if name == "predict":
            p.add_argument("--outcomes", default="all", help="comma-separated subset of the 11 outcomes, or all")
        p.add_argument("--pairs", type=Path, help="the run's pair store, if it moved (default: the one run.json names)")
        p.add_argument("--epochs", type=int, default=15, help="head training epochs (best on validation kept)")
        p.add_argument("--batch-size", type=int, default=128, help="head training batch (default 128)")
        p.add_argument("--workers", type=int, default=1, help="Ray Train workers per heads job")
        p.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
        p.add_argument("--seed", type=int, default=0, help="splits and initial weights of the heads")
        p.add_argument("--force", action="store_true", help="replace an --out folder that holds a different run")
        p.add_argument("--verbose", action="store_true", help="every log line on the console")
        p.set_defaults(handler=_downstream)

    p = sub.add_parser("cgni", help="paper 002: imaging-guided SNP representation for working-memory classification "
                                    "(three stages, baselines, sparse CCA, occlusion)")
    p.add_argument("--cohort", type=Path, required=True, help="a cohort with images and cognition.csv")
    p.add_argument("--out", type=Path, required=True, help="folder for the stages' runs, cgni.md and the post-analysis")
    p.add_argument("--panel", type=Path, help="SNP panel, one variant ID per line (default: the cohort's wm_panel.txt)")
    p.add_argument("--loss-weights", default="0.7,0.3,0,0.4",
                   help="lambda,sigma,gamma,theta of eq. 5 for the main model (default: the paper's best)")
    p.add_argument("--loss-terms", action="store_true",
                   help="also train every combination of the four loss terms (Table 2; 15 more stage-2 fits)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (paper: 5)")
    p.add_argument("--epochs", default="8,8,30,30",
                   help="epochs of brain age, transfer CNN, contrastive and classifier stages")
    p.add_argument("--age-subjects", type=int, metavar="N",
                   help="pre-train brain age on a random N of the subjects with images outside the two groups "
                        "(default: all of them)")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers per stage")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--seed", type=int, default=0, help="groups, folds and initial weights")
    p.add_argument("--force", action="store_true", help="replace an --out folder that holds a different run")
    p.add_argument("--verbose", action="store_true", help="every log line on the console")
    p.set_defaults(handler=_cgni)

    p = sub.add_parser("heritability", help="SNP heritability of each embedding dimension (Haseman-Elston on a GRM), "
                                            "and genetic correlations")
    p.add_argument("--embeddings", type=Path, required=True, help="a .parquet of eid + numeric columns")
    p.add_argument("--cohort", type=Path, required=True, help="the cohort whose genotypes the GRM is built from")
    p.add_argument("--out", type=Path, required=True, help="folder for h2.csv (and rg.csv)")
    p.add_argument("--rg", help="PREFIX1,PREFIX2: genetic correlation of each PREFIX1X column with PREFIX2X")
    p.add_argument("--qc", type=Path, metavar="DIR", help="a `comical qc` folder of this cohort to reuse "
                                                         "(default: QC is run)")
    p.add_argument("--method", choices=["auto", "exact", "randomized"], default="auto",
                   help="exact HE on the n x n GRM, or randomized HE (RHE-reg: no GRM, memory O(n)); auto: exact up "
                        "to 10,000 subjects (default)")
    p.add_argument("--components", type=Path, metavar="FILE",
                   help="variant_id and component per variant (e.g. MAF or LD bins): each component's h2 and their "
                        "total by randomized multi-component HE (RHE-mc)")
    p.add_argument("--seed", type=int, default=0, help="the jackknife's blocks and the randomized method's vectors")
    p.add_argument("--force", action="store_true", help="replace an --out folder that holds a different run")
    p.set_defaults(handler=_heritability)

    p = sub.add_parser("grm", help="the genetic relationship matrix in GCTA's .grm.bin layout (as plink2 "
                                   "--make-grm-bin), over the QC-passed subjects and pruned variants")
    p.add_argument("--cohort", type=Path, required=True, help="the cohort whose genotypes the GRM is built from")
    p.add_argument("--out", type=Path, required=True, metavar="PREFIX",
                   help="writes PREFIX.grm.bin, PREFIX.grm.N.bin, PREFIX.grm.id (never over existing files)")
    p.add_argument("--qc", type=Path, metavar="DIR", help="a `comical qc` folder of this cohort to reuse")
    p.set_defaults(handler=_grm)

    p = sub.add_parser("evaluate", help="a trained run's evaluation on its held-out subjects, beside baselines")
    from comical.pipelines.registry import EVALUATIONS

    p.add_argument("task", choices=sorted(EVALUATIONS), metavar="{" + ",".join(sorted(EVALUATIONS)) + "}",
                   help="gemcont: paper 001's evaluation of one run; momentum: paper 003's of named runs")
    p.add_argument("--run", type=Path, help="gemcont: a `comical train --task gemcont` run folder")
    p.add_argument("--runs", help="momentum: NAME=RUN,... with names joint, t1, t2, autoencoder (`comical train "
                                  "--task momentum-t1t2 / momentum-t1 / momentum-t2 / autoencoder-t1t2` runs)")
    p.add_argument("--cohort", type=Path, required=True, help="the cohort the run was trained on (with images)")
    p.add_argument("--out", type=Path, required=True, help="folder for the evaluation tables and figure")
    p.add_argument("--workers", type=int, default=1, help="Ray workers for the embedding GWAS")
    p.add_argument("--qc", type=Path, metavar="DIR",
                   help="momentum: a `comical qc` folder of this cohort to reuse (default: QC is run)")
    p.add_argument("--force", action="store_true", help="replace an --out folder that holds a different run")
    p.set_defaults(handler=_evaluate)

    from comical.pipelines.demo import DEMO_EPOCHS

    p = sub.add_parser("demo", help="simulate the mini cohort, then run every step on it")
    p.add_argument("--out", type=Path, default=Path("demo-output"),
                   help="folder for every step's outputs (default demo-output)")
    p.add_argument("--seed", type=int, default=0, help="the cohort's and every step's seed")
    p.add_argument("--force", action="store_true", help="replace an --out folder that holds a different run")
    p.add_argument("--verbose", action="store_true", help="show Ray's logs and warnings (always in demo.log)")
    p.add_argument("--images", action="store_true", help="also simulate T1/T2 volumes and train GEMCONT on them")
    p.add_argument("--epochs", type=int, default=DEMO_EPOCHS, metavar="N",
                   help=f"COMICAL's training epochs (default {DEMO_EPOCHS}; 1 or 2 for a quicker look); the heads "
                        "train 2 per epoch, up to 10")
    p.set_defaults(handler=_demo)
    return parser


def _config_class(module: str, name: str):
    import importlib

    return getattr(importlib.import_module(f"comical.pipelines.{module}"), name)


def _train_config_class():
    from comical.distributed.config import TrainConfig

    return TrainConfig


# The TrainConfig keys `comical train` takes as flags (the rest through --config); `model.` keys are the task's.
_TRAIN_KEYS = {"task": str, "epochs": int, "batch_size": int, "seed": int, "storage_path": str,
               "engine.workers": int, "engine.use_gpu": bool, "engine.engine": str, "engine.zero_stage": int,
               "engine.precision": str, "engine.cpus_per_worker": float, "engine.max_failures": int,
               "engine.stall_seconds": float, "engine.compile": str, "engine.placement": str, "optim.learning_rate": float, "model.layout": str, "model.targets": str}


def _add_config_flags(parser: argparse.ArgumentParser, config_class, keys: dict | None = None) -> None:
    """One `--flag` per config key (its last part, underscores as dashes); unset flags leave the config alone. Its
    help is the field's comment in the config class (`field_comments`).

    `keys` picks nested keys (`section.key`: type); by default every field of a flat config. Tuple fields take
    comma-separated values; booleans take true/false, or nothing for true.
    """
    from comical.data_io.configs import field_comments

    if keys is None:
        keys = {f.name: type(f.default) for f in dataclasses.fields(config_class)}
        keys.update({f.name: tuple[type(f.default[0]) if f.default else str] for f in dataclasses.fields(config_class)
                     if isinstance(f.default, tuple)})
        keys.update({f.name: int for f in dataclasses.fields(config_class) if f.default is None})  # optional seeds
    for key, kind in keys.items():
        extra = {}
        if kind is bool:
            convert = lambda text: text.lower() in ("1", "true", "yes")  # noqa: E731
            extra = {"nargs": "?", "const": True, "metavar": "true|false"}
        elif getattr(kind, "__origin__", None) is tuple:
            convert = lambda text, kind=kind.__args__[0]: tuple(kind(x) for x in text.split(","))  # noqa: E731
            extra = {"metavar": "A,B,..."}
        else:
            convert = kind
            extra = {"metavar": {int: "N", float: "X"}.get(kind, "TEXT")}
        owner, leaf = _key_owner(config_class, key)
        default = next((f.default for f in dataclasses.fields(owner) if f.name == leaf), None)
        shown = "" if default is None or default == "" else f" (default {default})"
        parser.add_argument(f"--{leaf.replace('_', '-')}", dest=f"cfg_{key.replace('.', '__')}", type=convert,
                            default=None, help=f"{field_comments(owner).get(leaf, key)}{shown}".replace("%", "%%"), **extra)


def _key_owner(config_class, key: str):
    """The config class holding a dotted key's last part, and that part (`model.` keys: COMICAL's model config)."""
    import typing

    *sections, leaf = key.split(".")
    owner = config_class
    for section in sections:
        if section == "model":
            from comical.distributed.task import get_task

            owner = get_task("comical").model_config
        else:
            owner = typing.get_type_hints(owner)[section]
    return owner, leaf


def _add_keep_extract(p) -> None:
    p.add_argument("--keep", type=Path, metavar="FILE", help="only these samples (plink2 --keep: FID IID, or IID)")
    p.add_argument("--extract", type=Path, metavar="FILE", help="only these variants (plink2 --extract: variant IDs)")


def _keep_extract(args) -> tuple[list[str] | None, list[str] | None]:
    from comical.data_io.plink import read_id_list

    return tuple(read_id_list(path, flag) if path else None
                 for path, flag in ((args.keep, "--keep"), (args.extract, "--extract")))


def _config_from_args(config_class, args, source: str, **values):
    """The config of `--config` (or the defaults), then `values`, then the flags: the one override order. Checked
    once, merged: a YAML's `model:` keys are typed by the task a flag may name (`--task gemcont`)."""
    from comical.data_io.configs import read_yaml

    merged = read_yaml(args.config) if args.config else {}  # {}: the defaults
    flags = {k[4:].replace("__", "."): v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}
    for key, value in {**values, **flags}.items():
        section, _, leaf = key.rpartition(".")
        holder = merged.setdefault(section, {}) if section else merged
        holder[leaf] = list(value) if isinstance(value, tuple) else value
    return config_class.from_dict(merged, source=str(args.config) if args.config else source)


def _modalities(text: str) -> tuple[str, ...]:
    from comical.data_io.simulate_images import MODALITIES

    names = tuple(dict.fromkeys(m.strip().lower() for m in text.split(",") if m.strip()))
    unknown = [m for m in names if m not in MODALITIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: expected modalities from {','.join(MODALITIES)}")
    return names


def _simulate(args) -> int:
    from comical.data_io.output_dir import check_output_dir, staged_output_dir
    from comical.data_io.simulate import write_cohort

    if args.signal < 0 or not 0 <= args.idp_h2 < 1:
        raise InputError(f"--signal {args.signal:g} --idp-h2 {args.idp_h2:g}: expected K >= 0 and 0 <= H < 1")
    run = {"command": "simulate", "preset": args.preset, "seed": args.seed}
    if args.images:
        run["images"], run["voxel_mm"] = list(args.images), args.voxel_mm
    dials = {k: v for k, v in (("signal", args.signal), ("idp_h2", args.idp_h2)) if v != (1.0 if k == "signal" else 0)}
    run |= dials
    out = check_output_dir(args.out, run, force=args.force)
    start = time.perf_counter()
    with staged_output_dir(out, run) as stage:
        manifest = write_cohort(stage, preset=args.preset, seed=args.seed, images=args.images,
                                voxel_mm=args.voxel_mm, signal=args.signal, idp_h2=args.idp_h2)
    images = ""
    if args.images:
        image_bytes = sum(f.stat().st_size for f in (out / "images").iterdir())
        images = f", {'+'.join(args.images)} volumes at {args.voxel_mm:g} mm ({image_bytes / 2**20:,.0f} MiB)"
    print(f"simulate: wrote the {args.preset} cohort ({manifest['n_subjects']} subjects, {manifest['n_variants']} "
          f"variants, {manifest['n_idps']} IDPs{images}{''.join(f', {k} {v:g}' for k, v in dials.items())}) to {out} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


def _qc(args) -> int:
    from comical.data_io.cohort import load_cohort
    from comical.data_io.output_dir import check_output_dir, staged_output_dir
    from comical.pipelines.statgen.qc import QCConfig

    from comical.pipelines.comical.chain import write_qc

    config = _config_from_args(QCConfig, args, "comical qc")
    keep, extract = _keep_extract(args)
    run = {"command": "qc", "cohort": str(args.cohort.resolve()), "config": config.to_dict(),
           **{flag: str(path.resolve()) for flag, path in (("keep", args.keep), ("extract", args.extract)) if path}}
    out = check_output_dir(args.out, run, force=args.force, inputs=(args.cohort,))
    cohort = load_cohort(args.cohort, keep=keep)
    with staged_output_dir(out, run) as stage:
        write_qc(cohort, config, stage, shown_as=out, extract=extract)
    return 0


def _phewas(args) -> int:
    from comical.data_io.cohort import load_cohort
    from comical.data_io.output_dir import check_output_dir, staged_output_dir
    from comical.pipelines.statgen.phewas import PhewasConfig, run_phewas, write_phewas
    from comical.pipelines.statgen.qc import QCResult

    from comical.pipelines.comical.chain import qc_of

    config = _config_from_args(PhewasConfig, args, "comical phewas")
    run = {"command": "phewas", "cohort": str(args.cohort.resolve()), "qc": str(args.qc), "config": config.to_dict()}
    out = check_output_dir(args.out, run, force=args.force, inputs=(args.cohort,))
    cohort = load_cohort(args.cohort)
    if args.qc:
        QCResult.read(args.qc)  # checked before any compute
    with staged_output_dir(out, run) as stage:
        qc = qc_of(cohort, args.qc, stage, shown_as=out)
        table, mapping = run_phewas(cohort, qc, config)
        write_phewas(table, mapping, config, stage)
    print(f"phewas: {table.height} tests, {mapping.height} IDPs mapped to a disease "
          f"({', '.join(f'{d} {n}' for d, n in mapping['disease'].value_counts(sort=True).iter_rows())}) -> {out}")
    return 0


def _pairs(args) -> int:
    from comical.data_io.cohort import load_cohort
    from comical.data_io.output_dir import check_output_dir, staged_output_dir
    from comical.data_io.traits import load_trait_map
    from comical.pipelines.comical.pairs import PairsConfig

    from comical.pipelines.comical.chain import write_pair_store

    config = _config_from_args(PairsConfig, args, "comical pairs")
    run = {"command": "pairs", "cohort": str(args.cohort.resolve()), "qc": str(args.qc), "phewas": str(args.phewas),
           "trait_map": str(args.trait_map), "config": config.to_dict()}
    out = check_output_dir(args.out, run, force=args.force, inputs=(args.cohort,))
    cohort = load_cohort(args.cohort)
    trait_map = load_trait_map(args.trait_map)
    with staged_output_dir(out, run) as stage:
        manifest = write_pair_store(cohort, config, trait_map, stage, qc_dir=args.qc, phewas_dir=args.phewas,
                                shown_as=out)
    print(f"pairs: {sum(s['pairs'] for s in manifest['splits'].values()):,} pairs "
          f"({manifest['n_subjects']} subjects x {manifest['pairs_per_subject']}; buckets "
          f"{', '.join(manifest['buckets'])}) -> {out}")
    return 0


def _train(args) -> int:
    from comical.distributed.run import train_and_evaluate
    from comical.distributed.task import get_task
    from comical.pipelines.registry import inputs_maker

    prepare = prepared_from = None
    if args.cohort is not None:  # inputs made from a cohort (GEMCONT, T1/T2) into the run folder
        if args.data is not None:
            raise InputError("give --cohort (GEMCONT and the T1/T2 tasks make their inputs from it) or --data, "
                             "not both")
        config = _config_from_args(_train_config_class(), args, "comical train",
                                   data=str(args.out.resolve() / "inputs"))
        prepare, prepared_from = inputs_maker(config.task, args.cohort, seed=config.seed, disease=args.disease)
    elif args.data is None:
        raise InputError("--data (or --pairs) is required: the task's input folder")
    else:
        config = _config_from_args(_train_config_class(), args, "comical train", data=str(args.data.resolve()))
    metrics = train_and_evaluate(config, args.out, resume=args.resume, force=args.force, verbose=args.verbose,
                                 prepare=prepare, prepared_from=prepared_from)
    print(f"train: best epoch {metrics['best_epoch']} (lowest validation loss); "
          f"{get_task(config.task).summary(metrics)} -> {args.out}")
    return 0


def _tune(args) -> int:
    from comical.distributed.config import TrainConfig
    from comical.pipelines.registry import model
    from comical.tuning.sweep import Interrupted, new_request, resumed_request, tune

    if args.resume:
        request, out = resumed_request(args.resume)
    else:
        request, out = new_request(args.pairs, args.out, space=args.space, num_samples=args.num_samples,
                                   max_epochs=args.max_epochs, workers_per_trial=args.workers_per_trial,
                                   gpus_per_worker=args.gpus_per_worker, config=args.config)
    table1 = model(TrainConfig.from_dict(request["base"], source="comical tune").task).table1
    try:
        table, best = tune(request, out, resume=bool(args.resume), force=args.force, verbose=args.verbose,
                           table1=table1)
    except Interrupted as stopped:
        print(f"tune: {stopped}")
        return 130  # the shell's status for a Ctrl-C
    table1_file = f", {out / 'table1.md'}" if (out / "table1.md").exists() else ""
    print(f"tune: {table.height} trials ({int(table['stopped_by_asha'].sum())} stopped early by ASHA, "
          f"{int(table['errored'].sum())} failed); best validation loss {best['best_val_loss']:.4f} -> "
          f"{out / 'best_config.yaml'}{table1_file}")
    return 0


def _gwas(args) -> int:
    from comical.pipelines.statgen.gwas import run_gwas, tables_reader

    split = lambda text: [x.strip() for x in text.split(",") if x.strip()] if text else None  # noqa: E731
    keep, extract = _keep_extract(args)
    read_tables = tables_reader(cohort=args.cohort, bfile=args.bfile, pfile=args.pfile, bgen=args.bgen,
                                sample=args.sample, pheno=args.pheno, covar=args.covar, keep=keep, extract=extract,
                                out=args.out, workers=args.workers, binary=args.binary, multi_trait=args.multi_trait,
                                mt_pcs=args.mt_pcs, rank_normalise=args.rank_normalise,
                                pheno_names=split(args.pheno_name), covar_names=split(args.covar_name))
    clump = None if args.no_clump else {"p1": args.clump_p1, "p2": args.clump_p2, "r2": args.clump_r2,
                                        "window_kb": args.clump_kb}
    summary = run_gwas(read_tables, args.out, workers=args.workers, block_size=args.block_size,
                       plots=not args.no_plots, clump=clump, out_format=args.out_format)
    for name, info in list(summary["phenotypes"].items())[:10]:
        lam = f"{info['lambda_gc']:.3f}" if info["lambda_gc"] is not None else "NA"
        print(f"gwas: {name}: {info['test']}, n {info['n']}, lambda_GC {lam}, {info['hits']} hits at 5e-8, "
              f"{info.get('clumps', 0)} clumps")
    more = len(summary["phenotypes"]) - 10
    print(f"gwas: {summary['n_variants']} variants x {len(summary['phenotypes'])} phenotypes"
          f"{f' ({more} more in the summary)' if more > 0 else ''} -> {args.out}.*.{args.out_format}, "
          f"{args.out}.summary.json")
    return 0


def _bench_scaling(args) -> int:
    import platform

    from comical.distributed.config import TrainConfig
    from comical.distributed.scaling import measure, write_outputs
    from comical.distributed.train import check_train_inputs

    try:
        workers = sorted({int(w) for w in args.workers.split(",")})
    except ValueError:
        raise InputError(f"--workers {args.workers}: expected comma-separated counts like 1,2,4") from None
    if workers[0] < 1 or args.epochs < 2:
        raise InputError("--workers must be >= 1 and --epochs >= 2 (the first epoch is warm-up)")
    config = TrainConfig.from_dict({"data": str(args.pairs.resolve()), "epochs": args.epochs,
                                    "batch_size": args.batch_size,
                                    "engine": {"engine": args.engine, "zero_stage": args.zero_stage,
                                               "use_gpu": args.use_gpu,
                                               **({"precision": "bf16"} if args.use_gpu else {})}})
    info = check_train_inputs(config)
    import ray

    from comical.distributed.ray_session import init_ray

    init_ray(log_to_driver=False)
    resources = ray.cluster_resources()
    table = measure(config, info, workers)
    title = (f"{args.engine} ZeRO-{args.zero_stage}, batch {args.batch_size}, {platform.node() or 'host'}: "
             f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs")
    write_outputs(table, args.out, title)
    print((args.out / "scaling.md").read_text(), end="")
    return 0


def _bench_gemcont_sim(args) -> int:
    from comical.pipelines.gemcont.simulation import QUICK, SimBench, run_benchmark

    bench = QUICK if args.quick else SimBench()
    changes = {k: v for k, v in (("splits", args.splits), ("epochs", args.epochs), ("n_test", args.n_test),
                                 ("n_train", args.n_train), ("learning_rate", args.learning_rate)) if v is not None}
    if args.n_train_values:
        try:
            changes["n_train_values"] = tuple(int(v) for v in args.n_train_values.split(","))
        except ValueError:
            raise InputError(f"--n-train-values {args.n_train_values}: expected comma-separated counts") from None
    if any(v < 1 for v in changes.get("n_train_values", ())) or any(
            changes.get(k, 1) < 1 for k in ("splits", "epochs", "n_test", "n_train")) or changes.get(
            "learning_rate", 1) <= 0:
        raise InputError("--splits, --epochs, --n-test, --n-train and --n-train-values must be >= 1, "
                         "--learning-rate > 0")
    if args.h_g_values:
        try:
            changes["h_g_values"] = tuple(float(v) for v in args.h_g_values.split(","))
        except ValueError:
            raise InputError(f"--h-g-values {args.h_g_values}: expected comma-separated numbers") from None
        if not all(0 <= v <= 1 for v in changes["h_g_values"]):
            raise InputError(f"--h-g-values {args.h_g_values}: expected heritabilities between 0 and 1")
    bench = dataclasses.replace(bench, **changes, projector_init=args.projector_init)
    table = run_benchmark(args.sweep, args.out, bench=bench, methods=tuple(args.methods.split(",")),
                          workers=args.workers, use_gpu=args.use_gpu, force=args.force,
                          reuse=args.reuse)
    print((args.out / "results.md").read_text(), end="")
    return 0 if table.height else 1


def _images_import(args) -> int:
    import polars as pl

    from comical.pipelines.image_import import import_images, read_subjects

    table = args.out.parent / "covariates.csv"
    if not args.subjects and not table.is_file():
        raise InputError(f"--out {args.out}: no {table} to take the subjects from; give --subjects FILE")
    eids = read_subjects(args.subjects or table)
    if args.voxel_mm is not None and args.voxel_mm <= 0 or args.workers is not None and args.workers < 1:
        raise InputError("--voxel-mm must be > 0 and --workers >= 1")
    patterns = {"t1": args.t1, **({"t2": args.t2} if args.t2 else {})}
    manifest = import_images(patterns, eids, args.out, voxel_mm=args.voxel_mm, atlas=args.atlas,
                             atlas_labels=args.atlas_labels, workers=args.workers)
    report = pl.read_csv(args.out / "import_report.tsv", separator="\t", null_values="NA")
    counts = {status: report.filter(pl.col("status") == status)["eid"].n_unique()
              for status in ("missing", "refused")}
    first = report.filter(pl.col("status").is_in(["missing", "refused"])).head(1)
    why = (f" (first: eid {first['eid'][0]}, {first['file'][0]}: {first['reason'][0]})" if first.height else "")
    print(f"images import: {manifest['n_subjects']} of {len(eids)} subjects stored ({', '.join(patterns)}) on a "
          f"{'x'.join(map(str, manifest['shape']))} grid of {manifest['voxel_mm']:g} mm; subjects with a missing file "
          f"{counts['missing']}, with a refused one {counts['refused']}{why} -> {args.out} (import_report.tsv)")
    return 0


def _cohort_build(args) -> int:
    from comical.data_io.output_dir import check_output_dir, staged_output_dir
    from comical.data_io.showcase import load_map
    from comical.pipelines.cohort_build import build_cohort

    mapping = load_map(args.map, instance=args.instance)
    run = {"command": "cohort build", "showcase": str(args.showcase.resolve()), "map": mapping.source,
           "instance": mapping.instance, "genotypes": str(args.genotypes.resolve()), "catalog": str(args.catalog)}
    out = check_output_dir(args.out, run, force=args.force, inputs=(args.showcase, args.genotypes, args.catalog))
    with staged_output_dir(out, run) as stage:
        report = build_cohort(args.showcase, mapping, args.genotypes, args.sample, args.catalog, stage)
    complete = report["subjects_complete"]
    print(f"cohort build: {report['subjects']:,} showcase subjects, {report['subjects_with_genotypes']:,} with genotypes; "
          f"complete rows: IDPs {complete['idps']:,}, covariates {complete['covariates']:,} (negative codes made "
          f"missing: {sum(report['negative_codes_to_missing'].values()):,} values); cases "
          f"{', '.join(f'{d} {n}' for d, n in report['cases'].items())} -> {out} (build_report.json)")
    return 0


def _bench_positive_control(args) -> int:
    from comical.pipelines.positive_control import ControlSettings, run_positive_control

    try:
        signals = tuple(float(k) for k in args.signal.split(","))
    except ValueError:
        raise InputError(f"--signal {args.signal}: expected comma-separated numbers like 1,3,10,30") from None
    if min(signals) < 0 or min(args.seeds, args.workers) < 1 or (args.epochs or 1) < 1 or args.top_n_perc <= 0 \
            or args.voxel_mm <= 0 or args.n_train < 100 or (args.learning_rate or 1) <= 0:
        raise InputError("--signal must be >= 0; --seeds, --epochs and --workers >= 1; --top-n-perc, --voxel-mm and "
                         "--learning-rate > 0; --n-train >= 100")
    settings = ControlSettings(signals=signals, seeds=args.seeds, epochs=args.epochs, top_n_perc=args.top_n_perc,
                               workers=args.workers, max_subjects=args.max_subjects, layout=args.layout,
                               voxel_mm=args.voxel_mm, n_train=args.n_train, preset=args.preset,
                               learning_rate=args.learning_rate)
    run_positive_control(args.out, args.method, settings)
    print((args.out / "results.md").read_text(), end="")
    return 0


def _downstream(args) -> int:
    from comical.pipelines.downstream.heads import (HeadSettings, predict_line, predict_outcomes, risk_scores,
                                                    riskscore_line)

    if min(args.epochs, args.batch_size, args.workers) < 1:
        raise InputError("--epochs, --batch-size and --workers must be >= 1")
    settings = HeadSettings(epochs=args.epochs, batch_size=args.batch_size, workers=args.workers,
                            use_gpu=args.use_gpu, seed=args.seed)
    common = {"pairs": args.pairs, "settings": settings, "force": args.force, "verbose": args.verbose}
    if args.command == "predict":
        outcomes = None if args.outcomes == "all" else args.outcomes.split(",")
        summary = predict_outcomes(args.run, args.cohort, args.out, outcomes=outcomes, **common)
        print((args.out / "auc.md").read_text(), end="")
        print(f"predict: {predict_line(summary)} -> {args.out}")
    else:
        summary = risk_scores(args.run, args.cohort, args.out, **common)
        print((args.out / "riskscore.md").read_text(), end="")
        print(f"riskscore: {riskscore_line(summary)} -> {args.out}")
    return 0


def _numbers(text: str, flag: str, count: int, kind=float) -> tuple:
    try:
        values = tuple(kind(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise InputError(f"{flag} {text}: expected {count} comma-separated numbers")
    return values


def _cgni(args) -> int:
    from comical.pipelines.cgni.run import CgniSettings, run_cgni, table1_line

    epochs = _numbers(args.epochs, "--epochs", 4, int)
    if min(*epochs, args.workers) < 1:
        raise InputError("--epochs and --workers must be >= 1")
    settings = CgniSettings(weights=_numbers(args.loss_weights, "--loss-weights", 4), grid=args.loss_terms,
                            folds=args.folds, age_epochs=epochs[0], cnn_epochs=epochs[1],
                            contrastive_epochs=epochs[2], classify_epochs=epochs[3], workers=args.workers,
                            use_gpu=args.use_gpu, seed=args.seed, age_subjects=args.age_subjects)
    summary = run_cgni(args.cohort, args.out, settings=settings, panel=args.panel, force=args.force,
                       verbose=args.verbose)
    print((args.out / "cgni.md").read_text(), end="")
    print(f"cgni: {table1_line(summary)} -> {args.out}")
    return 0


def _heritability(args) -> int:
    from comical.data_io.output_dir import check_output_dir, staged_output_dir
    from comical.pipelines.statgen.heritability import heritability

    prefixes = tuple(args.rg.split(",")) if args.rg else None
    if prefixes is not None and len(prefixes) != 2:
        raise InputError(f"--rg {args.rg}: expected two column prefixes, e.g. t1_,t2_")
    run = {"command": "heritability", "embeddings": str(args.embeddings.resolve()),
           "cohort": str(args.cohort.resolve()), "rg": args.rg, "seed": args.seed, "method": args.method,
           "qc": str(args.qc.resolve()) if args.qc else None,
           "components": str(args.components.resolve()) if args.components else None}
    inputs = (args.embeddings, args.cohort) + ((args.qc,) if args.qc else ()) + (
        (args.components,) if args.components else ())
    out = check_output_dir(args.out, run, force=args.force, inputs=inputs)
    with staged_output_dir(out, run) as stage:
        summary = heritability(args.embeddings, args.cohort, stage, rg_prefixes=prefixes, seed=args.seed,
                               qc_dir=args.qc, method=args.method, components=args.components)
    for note in summary["notes"]:
        print(f"heritability: {note}")
    rg = f", mean rg {summary['mean_rg']:.3f}" if "mean_rg" in summary else ""
    print(f"heritability: mean h2 {summary['mean_h2']:.3f} over {summary['n_subjects']} subjects and "
          f"{summary['n_variants']} pruned variants ({summary['method']}){rg} -> {out}")
    return 0


def _grm(args) -> int:
    from comical.pipelines.statgen.grm import grm

    summary = grm(args.cohort, args.out, qc_dir=args.qc)
    print(f"grm: {summary['n_subjects']} subjects x {summary['n_variants']} pruned variants -> "
          f"{', '.join(summary['files'])}")
    return 0


def _associate(args) -> int:
    from comical.pipelines.comical.associations import associate_run, truth_summary

    summary = associate_run(args.run, test=args.test, cohort=args.cohort)
    print(f"associate: {summary['n_pairs']} SNP-IDP pairs ({summary['test']} test), {summary['n_fdr05']} at FDR 5%, "
          f"{summary['n_p05']} at p < 0.05 -> {summary['file']}")
    if summary.get("truth") is not None:
        print(f"associate: {truth_summary(summary['truth'])} -> {args.run / 'truth_score.json'}")
    return 0


def _embed(args) -> int:
    import io

    import pyarrow.parquet as pq

    from comical.data_io.output_dir import write_atomic
    from comical.pipelines.embed import embed_run

    if args.out.exists() and not args.force:
        raise InputError(f"--out {args.out}: exists; pass --force to replace it")
    if args.out.suffix != ".parquet":
        raise InputError(f"--out {args.out}: expected a .parquet file name")
    table, what = embed_run(args.run, args.cohort)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    write_atomic(args.out, buffer.getvalue())
    print(f"embed: {what} -> {args.out}")
    return 0


def _evaluate(args) -> int:
    from comical.data_io.output_dir import check_output_dir, staged_output_dir
    from comical.pipelines.gemcont.evaluate import summary_line
    from comical.pipelines.registry import EVALUATIONS, load

    if args.task == "momentum":
        return _evaluate_momentum(args)
    if args.run is None:
        raise InputError("evaluate gemcont: --run is required")
    run = {"command": "evaluate gemcont", "run": str(args.run.resolve()), "cohort": str(args.cohort.resolve())}
    out = check_output_dir(args.out, run, force=args.force, inputs=(args.run, args.cohort))
    with staged_output_dir(out, run) as stage:
        summary = load(EVALUATIONS["gemcont"][0])(args.run, args.cohort, stage, workers=args.workers)
    print(f"evaluate: {summary_line(summary)} -> {out}")
    return 0


def _evaluate_momentum(args) -> int:
    from comical.data_io.output_dir import check_output_dir, staged_output_dir
    from comical.pipelines.registry import EVALUATIONS, load

    if not args.runs:
        raise InputError("evaluate momentum: --runs NAME=RUN,... is required (names: joint, t1, t2, autoencoder)")
    pairs = [item.split("=", 1) for item in args.runs.split(",")]
    if any(len(p) != 2 for p in pairs):
        raise InputError(f"--runs {args.runs}: expected NAME=RUN,... (names: joint, t1, t2, autoencoder)")
    runs = {name: Path(path) for name, path in pairs}
    run = {"command": "evaluate momentum", "runs": {k: str(v.resolve()) for k, v in runs.items()},
           "cohort": str(args.cohort.resolve())}
    if args.qc:
        run["qc"] = str(args.qc.resolve())
    out = check_output_dir(args.out, run, force=args.force, inputs=(*runs.values(), args.cohort))
    with staged_output_dir(out, run) as stage:
        load(EVALUATIONS["momentum"][0])(runs, args.cohort, stage, workers=args.workers, qc_dir=args.qc)
    print((out / "evaluation.md").read_text(), end="")
    print(f"evaluate: T1/T2 momentum model and its baselines -> {out}")
    return 0


def _demo(args) -> int:
    from comical.pipelines.demo import run_demo

    if args.epochs < 1:
        raise InputError(f"--epochs {args.epochs}: expected at least 1")
    run_demo(args.out, seed=args.seed, force=args.force, verbose=args.verbose, images=args.images, epochs=args.epochs)
    return 0
