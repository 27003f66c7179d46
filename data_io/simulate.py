"""Simulated UK-Biobank-like cohort in real file formats: the default input, the test fixture, the format spec.

    comical simulate --preset mini --seed 0 --out cohort/

What is planted, so that later steps can be scored against `truth/`:
- genotypes: Balding-Nichols allele frequencies in four subpopulations (Fst per preset) (structure the PCs capture), LD blocks
  from an AR(1) latent haplotype model, a few percent missing calls, and planted QC failures (low-MAF,
  Hardy-Weinberg and missingness failures among variants; high-missingness and contaminated samples);
- diseases: liabilities driven by a causal subset of each disease's catalog SNPs (the rest are catalog false
  hits), covariates and subpopulation; cases are the top liabilities (paper: Table 2 counts exactly);
- IDPs: log-volumes driven by head size, age, sex, subpopulation, disease status on disease-specific regions and
  a sparse set of direct SNP->IDP effects (pleiotropic disease leads on the disease's regions, other catalog
  SNPs, background variants on any IDP), written as mm^3 volumes;
- working memory (cognition.csv, wm_panel.txt): a backward digit span driven by age, a causal minority of a
  disclosed SNP panel and planted grey-matter regions (data_io.simulate_wm, paper 002);
- a GWAS Catalog download listing true and false hits, interactions, haplotypes, ungenotyped variants,
  strand-flipped and unknown risk alleles.
Same seed, same bytes: every random draw comes from one SeedSequence, spawned per component.

Two dials set how much there is to find (`--signal K`, `--idp-h2 H`; both recorded in manifest.json and
truth/signal.json). K = 1, H = 0 is the default cohort, byte for byte; K = 0 plants no SNP->IDP effect and no image
latent (a null cohort). K scales, for each paper:
- COMICAL (000): every SNP->IDP effect by sqrt(K), and the pleiotropic leads per disease (each on 1-2 of the
  disease's regions) by sqrt(K), at most the disease's causal catalog SNPs, so more of each bucket's candidate pairs
  are planted. Effects stacked on one IDP share its variance, so a pair's R^2 grows less than K-fold (mini, median
  over planted pairs: 0.013 at K = 1, 0.046 at 10, 0.069 at 30; docs/cohort.md);
- GEMCONT (001): the image latent's effect on grey matter by sqrt(K) (data_io.simulate_images);
- CGNI (002): the genetic and regional shares of the working-memory liability by K before the four shares are
  rescaled to sum to 1 (data_io.simulate_wm).
H adds a polygenic part to every IDP: IDP_POLYGENIC_VARIANTS clean variants with Gaussian effects (independent per
IDP), scaled so that it is H of the IDP's log-volume variance (UK Biobank IDPs: about 0.2-0.5); its effects are in
truth/idp_polygenic_effects.parquet and each IDP's share in truth/idp_h2.parquet.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
from bed_reader import to_bed
from scipy.special import ndtri

from comical.data_io.pca import genotype_pcs
from comical.data_io.simulate_wm import write_working_memory
from comical.data_io.traits import load_trait_map
from comical.data_io.ukb_fields import (
    DISEASES, EPRS_DISEASES, FAST_IDPS, IDPS, N_PCS, PAIR_DISEASES, PAPER_CASES,
)

# GRCh38 autosome lengths in Mb: variants are spread over chromosomes in proportion.
_CHROM_MB = [248.9, 242.2, 198.3, 190.2, 181.5, 170.8, 159.3, 145.1, 138.4, 133.8, 135.1, 133.3, 114.4, 107.0,
             102.0, 90.3, 83.3, 80.4, 58.6, 64.4, 46.7, 50.8]
_POP_SHARES = [0.55, 0.2, 0.15, 0.1]  # four European-ancestry subpopulations
# Share of the catalog's variants per pair-making disease (roughly as many hits as the Catalog lists).
_CATALOG_SHARE = {"AD": 0.14, "ADHD": 0.10, "BD": 0.16, "CBVD": 0.06, "MD": 0.06, "MS": 0.18, "PD": 0.14, "UD": 0.16}
LOG_VOLUME_SCALE = 0.11  # an IDP's log volume is its baseline's plus this x its latent (SD ~1)
_CAUSAL_FRACTION = 0.4  # the rest of a disease's catalog rows are false hits in this cohort
_H2 = {"AD": 0.35, "ADHD": 0.3, "BD": 0.3, "CBVD": 0.25, "MD": 0.3, "MS": 0.35, "PD": 0.3, "UD": 0.25}
# Diseases the paper does not pair: genetics borrowed from a related disease plus background variants.
_RELATED = {"ASD": "ADHD", "SZ": "BD", "Stroke": "CBVD"}
# Regions whose grey matter each disease reduces (keywords matched against IDP names).
_DISEASE_REGIONS = {
    "AD": ["Hippocampus", "Amygdala", "Parahippocampal_Gyrus_anterior", "Temporal_Pole"],
    "ADHD": ["Amygdala", "Caudate", "Frontal_Orbital", "Cingulate_Gyrus_anterior"],
    "BD": ["Insular", "Frontal_Orbital", "Cingulate_Gyrus_anterior"],
    "CBVD": ["Thalamus", "Putamen", "Pallidum"],
    "MD": ["Insular", "Frontal_Medial", "Subcallosal"],
    "MS": ["Thalamus", "Brain_Stem", "Caudate"],
    "PD": ["Putamen", "Pallidum", "Brain_Stem_4th"],
    "UD": ["Hippocampus", "Cingulate_Gyrus_anterior", "Subcallosal"],
    "SZ": ["Superior_Temporal_Gyrus", "Hippocampus"],
    "Stroke": ["Thalamus"],
    "ASD": ["Amygdala"],
}
# Typical FIRST volumes in mm^3 (UK Biobank means, rounded).
_FIRST_MM3 = {"Thalamus": 7800, "Caudate": 3500, "Putamen": 4900, "Pallidum": 1800, "Hippocampus": 3900,
              "Amygdala": 1300, "Accumbens": 500, "Brain_Stem_4th_Ventricle": 23000}
_CATALOG_COLUMNS = [
    "DATE ADDED TO CATALOG", "PUBMEDID", "FIRST AUTHOR", "DATE", "JOURNAL", "LINK", "STUDY", "DISEASE/TRAIT",
    "INITIAL SAMPLE SIZE", "REPLICATION SAMPLE SIZE", "REGION", "CHR_ID", "CHR_POS", "REPORTED GENE(S)",
    "MAPPED_GENE", "UPSTREAM_GENE_ID", "DOWNSTREAM_GENE_ID", "SNP_GENE_IDS", "UPSTREAM_GENE_DISTANCE",
    "DOWNSTREAM_GENE_DISTANCE", "STRONGEST SNP-RISK ALLELE", "SNPS", "MERGED", "SNP_ID_CURRENT", "CONTEXT",
    "INTERGENIC", "RISK ALLELE FREQUENCY", "P-VALUE", "PVALUE_MLOG", "P-VALUE (TEXT)", "OR or BETA",
    "95% CI (TEXT)", "PLATFORM [SNPS PASSING QC]", "CNV", "MAPPED_TRAIT", "MAPPED_TRAIT_URI", "STUDY ACCESSION",
    "GENOTYPING TECHNOLOGY",
]
_COMPLEMENT = str.maketrans("ACGT", "TGCA")


@dataclasses.dataclass(frozen=True)
class Preset:
    n_subjects: int
    n_catalog: int  # catalog variants in the bed (the paper: 5,632)
    n_background: int  # other variants, for PCA and LD
    min_prevalence: float  # rare diseases raised to this (mini), 0 = Table 2 counts as they are
    qc_failures: dict  # planted failures: catalog/background x maf/hwe/geno, and samples mind/het
    # Direct SNP -> IDP effects: (pleiotropic leads per disease, other causal catalog SNPs, background variants)
    snp_idp_effects: tuple[int, int, int]
    fst: float  # drift of the four subpopulations from the ancestral frequencies


PRESETS = {
    "mini": Preset(2000, 600, 2400, 0.08,
                   {"catalog": {"maf": 3, "hwe": 3, "geno": 3}, "background": {"hwe": 5, "geno": 10},
                    "samples": {"mind": 6, "het": 6}}, (3, 8, 12), fst=0.02),
    # 10 + 10 + 9 catalog failures: QC keeps the paper's 5,603 of 5,632 catalog variants. Structure is milder
# than mini's (Fst 0.006, European-like): with 40k subjects, Fst 0.02 alone fails HWE at 1e-16 (Wahlund effect).
    "paper": Preset(40426, 5632, 14368, 0.0,
                    {"catalog": {"maf": 10, "hwe": 10, "geno": 9}, "background": {"hwe": 30, "geno": 60},
                     "samples": {"mind": 60, "het": 50}}, (12, 20, 30), fst=0.006),
}
IDP_POLYGENIC_VARIANTS = 1000  # causal variants of the polygenic IDP part (--idp-h2), or every clean one if fewer
IMAGE_DISEASE = "AD"  # the image latent is this disease's planted liability from its causal catalog variants
T2_DISEASE = "MS"  # with --signal K > 1, a second latent (this disease's) brightens white matter in T2 only
_COMPONENTS = ["samples", "variants", "genotypes", "missing", "diseases", "idps", "catalog", "pcs"]


def write_cohort(out: str | Path, *, preset: str = "mini", seed: int = 0, images: tuple[str, ...] = (),
                 voxel_mm: float = 4.0, signal: float = 1.0, idp_h2: float = 0.0) -> dict:
    """Write the cohort directory of docs/cohort.md into the existing folder `out`; return its manifest.

    Files: genotypes.bed/.bim/.fam, idps.csv, covariates.csv, diagnoses.csv, eprs.csv, gwas_catalog.tsv,
    truth/*.parquet, manifest.json (seed, preset, sizes, version, notes, sha256 of every file); with `images`
    (modalities, e.g. ("t1", "t2")), images/ at `voxel_mm` and the planted image latent (data_io.simulate_images).
    `signal` and `idp_h2`: the dials of the module docstring.
    """
    if signal < 0 or not 0 <= idp_h2 < 1:
        raise ValueError(f"signal {signal} must be >= 0 and idp_h2 {idp_h2} in [0, 1)")
    from comical import __version__

    p = PRESETS[preset]
    out = Path(out)
    rngs = dict(zip(_COMPONENTS, (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(_COMPONENTS)))))
    samples = _simulate_samples(rngs["samples"], p.n_subjects)
    variants = _simulate_variants(rngs["variants"], p)
    genotypes = _simulate_genotypes(rngs["genotypes"], variants, samples["population"].to_numpy())
    diseases, disease_effects, genetic = _simulate_diseases(rngs["diseases"], p, samples, variants, genotypes)
    idps, idp_disease, snp_idp = _simulate_idps(rngs["idps"], p, samples, variants, genotypes, diseases,
                                                disease_effects, signal)
    polygenic = None
    if idp_h2 > 0:  # its own stream: the rest of the cohort is drawn as without it
        idps, polygenic = _add_polygenic_idps(np.random.default_rng(np.random.SeedSequence([seed, 2024, 2])), idps,
                                              variants, genotypes, idp_h2)
    if images:  # the image latent comes from the true genotypes, before calls go missing (as the liabilities do)
        ad = disease_effects.filter((pl.col("disease") == IMAGE_DISEASE) & pl.col("causal") & pl.col("in_catalog"))
        columns = variants.with_row_index("column").join(ad, on="variant_id", how="inner", maintain_order="right")
        latent_genotypes = genotypes[:, columns["column"].to_numpy()].copy()
        latent_spec = {"variant_ids": columns["variant_id"].to_list(), "weights": columns["beta"].to_numpy(),
                       "freq": columns["ancestral_freq"].to_numpy()}
        if signal > 1 and "t2" in images:  # paper 003's T2-only latent (data_io/simulate_images.py); none at K <= 1
            ms = disease_effects.filter((pl.col("disease") == T2_DISEASE) & pl.col("causal") & pl.col("in_catalog"))
            t2 = variants.with_row_index("column").join(ms, on="variant_id", how="inner", maintain_order="right")
            latent_spec["t2_latent"] = {"genotypes": genotypes[:, t2["column"].to_numpy()].copy(),
                                        "variant_ids": t2["variant_id"].to_list(), "weights": t2["beta"].to_numpy(),
                                        "freq": t2["ancestral_freq"].to_numpy(), "disease": T2_DISEASE}
    wm_rng = np.random.default_rng(np.random.SeedSequence([seed, 20240]))  # its own stream: nothing else changes
    write_working_memory(out, wm_rng, eid=samples["eid"].to_numpy(), age=samples["age"].to_numpy().astype(float),
                         genotypes=genotypes, variants=variants, disease_effects=disease_effects, idps=idps,
                         signal=signal)
    failed_samples = _plant_missingness_and_failures(rngs["missing"], p, variants, samples, genotypes)
    pcs = _covariate_pcs(variants, genotypes, seed)
    catalog, catalog_truth = _simulate_catalog(rngs["catalog"], variants, disease_effects)
    eprs = _simulate_eprs(rngs["pcs"], genetic)

    eid = samples["eid"]
    _write_bed(out / "genotypes.bed", samples, variants, genotypes)
    covariates = samples.select("eid", "age", "sex", "height", "bmi", "smoking").with_columns(
        pl.from_numpy(np.round(pcs, 6), schema=[f"PC{i + 1}" for i in range(N_PCS)]))
    covariates.write_csv(out / "covariates.csv")
    pl.DataFrame({"eid": eid}).with_columns(pl.from_numpy(np.round(idps, 2), schema=IDPS)).write_csv(out / "idps.csv")
    pl.DataFrame({"eid": eid, **{d: diseases[d].astype(np.int8) for d in DISEASES}}).write_csv(out / "diagnoses.csv")
    pl.DataFrame({"eid": eid, **{d: np.round(eprs[d], 5) for d in EPRS_DISEASES}}).write_csv(out / "eprs.csv")
    catalog.write_csv(out / "gwas_catalog.tsv", separator="\t", quote_style="never")

    truth = out / "truth"
    truth.mkdir(exist_ok=True)  # the working-memory truth is written first
    samples.with_columns(pl.Series("planted_failure", failed_samples),
                         *[pl.Series(f"liability_{d}", genetic[d]) for d in DISEASES]).write_parquet(
        truth / "samples.parquet")
    variants.drop("p_pop").write_parquet(truth / "variants.parquet")
    disease_effects.write_parquet(truth / "disease_snp_effects.parquet")
    idp_disease.write_parquet(truth / "idp_disease_effects.parquet")
    snp_idp.write_parquet(truth / "snp_idp_effects.parquet")
    catalog_truth.write_parquet(truth / "catalog_rows.parquet")
    if polygenic is not None:
        polygenic["effects"].write_parquet(truth / "idp_polygenic_effects.parquet")
        polygenic["h2"].write_parquet(truth / "idp_h2.parquet")
    dials = {"signal": signal, "idp_h2": idp_h2}
    (truth / "signal.json").write_text(json.dumps({**dials, "meaning": {
        "signal": "K: SNP->IDP effects x sqrt(K), pleiotropic leads per disease x sqrt(K), image latent effect x "
                  "sqrt(K), working memory's genetic and regional shares x K (then rescaled); with images and K > 1 "
                  "a T2-only latent of effect x sqrt(K - 1); 1 = the default, 0 = none",
        "idp_h2": "H: share of each IDP's log-volume variance from IDP_POLYGENIC_VARIANTS small effects (0: none)"},
        "idp_polygenic_variants": polygenic["n_variants"] if polygenic else 0}, indent=2) + "\n")
    if images:
        from comical.data_io.simulate_images import write_images

        write_images(out, eid=eid.to_numpy(), idps=idps, age=samples["age"].to_numpy().astype(float),
                     latent_genotypes=latent_genotypes, **latent_spec, disease=IMAGE_DISEASE,
                     modalities=images, voxel_mm=voxel_mm, seed=seed, signal=signal)

    cases = {d: int(diseases[d].sum()) for d in DISEASES}
    manifest = {
        "preset": preset, "seed": seed, "package_version": __version__,
        "images": {"modalities": list(images), "voxel_mm": voxel_mm} if images else None,
        "n_subjects": p.n_subjects, "n_variants": variants.height, "n_catalog_variants": p.n_catalog,
        "n_idps": len(IDPS), "cases": cases, "signal": dials,
        "notes": ([f"mini preset: diseases rarer than {p.min_prevalence:.0%} raised to {p.min_prevalence:.0%} "
                   "prevalence so every disease has cases; the paper preset uses Table 2 counts"]
                  if p.min_prevalence else ["case counts are the paper's Table 2"]),
        "files": {str(f.relative_to(out)): hashlib.sha256(f.read_bytes()).hexdigest()
                  for f in sorted(out.rglob("*")) if f.is_file()},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _simulate_samples(rng: np.random.Generator, n: int) -> pl.DataFrame:
    eid = np.sort(1_000_000 + rng.choice(5_030_000, n, replace=False))  # UK Biobank-like 7-digit eids
    pop = rng.choice(len(_POP_SHARES), n, p=_POP_SHARES)
    sex = (rng.random(n) < 0.47).astype(np.int8)  # UK Biobank field 31: 0 female, 1 male
    age = rng.integers(45, 83, n)
    height = np.round(162 + 13.5 * sex + 1.5 * (pop - 1.5) + rng.normal(0, 6.5, n), 1)
    bmi = np.round(np.exp(rng.normal(np.log(26.5), 0.16, n)), 2)
    smoking = rng.choice(3, n, p=[0.6, 0.33, 0.07])  # field 20116: never, previous, current
    return pl.DataFrame({"eid": eid, "population": pop.astype(np.int8), "age": age, "sex": sex, "height": height,
                         "bmi": bmi, "smoking": smoking})


def _simulate_variants(rng: np.random.Generator, p: Preset) -> pl.DataFrame:
    m = p.n_catalog + p.n_background
    counts = np.diff(np.round(np.cumsum([0] + _CHROM_MB) / sum(_CHROM_MB) * m).astype(int))
    chrom = np.repeat(np.arange(1, 23), counts)
    pos = np.concatenate([np.sort(1_000_000 + rng.choice(int(mb * 1e6) - 1_000_000, c, replace=False))
                          for mb, c in zip(_CHROM_MB, counts)])
    # LD blocks: runs of consecutive variants (mean ~8) sharing an AR(1) latent; rho = 0 starts a block.
    block_start = rng.random(m) < 1 / 8
    block_start[np.r_[0, np.cumsum(counts)[:-1]]] = True
    ld_block = np.cumsum(block_start) - 1
    rho = np.where(block_start, 0.0, rng.uniform(0.5, 0.95, ld_block[-1] + 1)[ld_block])
    is_catalog = np.zeros(m, bool)
    is_catalog[rng.choice(m, p.n_catalog, replace=False)] = True
    failure = np.full(m, "", dtype=object)
    for group, mask in (("catalog", is_catalog), ("background", ~is_catalog)):
        free = rng.permutation(np.flatnonzero(mask))
        taken = 0
        for kind, k in p.qc_failures[group].items():
            failure[free[taken:taken + k]] = kind
            taken += k
    freq = np.where(is_catalog, rng.uniform(0.1, 0.5, m), rng.uniform(0.01, 0.5, m))
    freq[failure == "maf"] = rng.uniform(0.004, 0.02, (failure == "maf").sum())
    freq = np.where(rng.random(m) < 0.5, freq, 1 - freq)  # the counted allele A1 is minor or major
    # Balding-Nichols: subpopulation frequencies drift from the ancestral one by Fst.
    a, b = freq * (1 - p.fst) / p.fst, (1 - freq) * (1 - p.fst) / p.fst
    p_pop = np.clip(rng.beta(a, b, (len(_POP_SHARES), m)), 0.001, 0.999)
    rs = 1000 + rng.choice(200_000_000, m, replace=False)
    bases = np.array(list("ACGT"))
    a1 = rng.integers(0, 4, m)
    a2 = (a1 + rng.integers(1, 4, m)) % 4
    allele1, allele2 = bases[a1].astype(object), bases[a2].astype(object)
    indel = rng.random(m) < 0.03
    ins = indel & (rng.random(m) < 0.5)  # an insertion lengthens A1, a deletion A2
    extra = bases[rng.integers(0, 4, (m, 2))]
    tail = np.char.add(extra[:, 0], extra[:, 1])
    allele1[ins] = allele2[ins] + tail[ins]
    allele2[indel & ~ins] = allele1[indel & ~ins] + tail[indel & ~ins]
    return pl.DataFrame({
        "variant_id": [f"rs{r}" for r in rs], "chrom": chrom.astype(np.int8), "pos": pos.astype(np.int64),
        "allele1": allele1.astype(str), "allele2": allele2.astype(str), "ancestral_freq": freq, "ld_block": ld_block,
        "rho": rho, "is_catalog": is_catalog, "planted_failure": failure.astype(str),
        "p_pop": p_pop.T,
    })


def _simulate_genotypes(rng: np.random.Generator, variants: pl.DataFrame, pop: np.ndarray) -> np.ndarray:
    """True allele counts of A1 (samples x variants, int8, Fortran order: one variant is contiguous)."""
    n, m = pop.size, variants.height
    rho = variants["rho"].to_numpy().astype(np.float32)
    thresholds = ndtri(variants["p_pop"].to_numpy()).astype(np.float32)  # m x K: allele A1 iff latent < t
    genotypes = np.empty((n, m), dtype=np.int8, order="F")
    latent = np.zeros((2, n), dtype=np.float32)
    chunk = 256
    for start in range(0, m, chunk):
        noise = rng.standard_normal((min(chunk, m - start), 2, n), dtype=np.float32)
        for j, e in enumerate(noise, start):
            latent *= rho[j]
            latent += np.sqrt(1 - rho[j] ** 2) * e
            t = thresholds[j][pop]
            genotypes[:, j] = (latent[0] < t).astype(np.int8) + (latent[1] < t)
    return genotypes


def _standardized(genotypes: np.ndarray, variants: pl.DataFrame, idx: np.ndarray) -> np.ndarray:
    f = variants["ancestral_freq"].to_numpy()[idx]
    return (genotypes[:, idx] - 2 * f) / np.sqrt(2 * f * (1 - f))


def _simulate_diseases(rng, p: Preset, samples: pl.DataFrame, variants: pl.DataFrame, genotypes: np.ndarray):
    """0/1 diagnoses, the planted SNP effects on liability, and each disease's genetic liability."""
    n = samples.height
    catalog = np.flatnonzero(variants["is_catalog"].to_numpy())
    clean = variants["planted_failure"].to_numpy() == ""
    owner = rng.choice(PAIR_DISEASES, catalog.size, p=[_CATALOG_SHARE[d] for d in PAIR_DISEASES])
    background = rng.permutation(np.flatnonzero(~variants["is_catalog"].to_numpy() & clean))
    age_z = (samples["age"].to_numpy() - 63) / 10.8
    sex = samples["sex"].to_numpy()
    pop = samples["population"].to_numpy()
    rows, genetic = [], {}
    for i, d in enumerate(PAIR_DISEASES + list(_RELATED)):
        if d in _RELATED:
            own = background[i * 40:(i + 1) * 40]
            causal, in_catalog = own, np.zeros(own.size, bool)
            listed = own
        else:
            listed = catalog[owner == d]
            candidates = listed[clean[listed]]
            causal = rng.choice(candidates, max(3, int(_CAUSAL_FRACTION * listed.size)), replace=False)
            in_catalog = np.ones(causal.size, bool)
        # Heavy-tailed effects: a few lead SNPs carry much of the heritability, as in real GWAS.
        beta = rng.exponential(1.0, causal.size) ** 2 * rng.choice([-1.0, 1.0], causal.size)
        score = _standardized(genotypes, variants, causal) @ beta
        h2 = _H2.get(d, 0.2)
        scale = np.sqrt(h2 / score.var())
        beta, score = beta * scale, score * scale
        if d in _RELATED:  # genetic correlation with the related disease
            score = np.sqrt(0.5) * score + np.sqrt(0.5) * genetic[_RELATED[d]] * np.sqrt(h2 / _H2[_RELATED[d]])
        genetic[d] = score
        listed_false = np.setdiff1d(listed, causal) if d not in _RELATED else np.array([], int)
        rows.append(pl.DataFrame({
            "disease": d, "variant_id": variants["variant_id"].to_numpy()[np.r_[causal, listed_false]],
            "beta": np.r_[beta, np.zeros(listed_false.size)],
            "causal": np.r_[np.ones(causal.size, bool), np.zeros(listed_false.size, bool)],
            "in_catalog": np.r_[in_catalog, np.ones(listed_false.size, bool)],
        }))
    effects = pl.concat(rows)
    diseases = {}
    for d in DISEASES:
        covariate = {"AD": 0.5 * age_z, "PD": 0.4 * age_z, "Stroke": 0.45 * age_z, "CBVD": 0.45 * age_z,
                     "MS": -0.3 * sex, "UD": -0.2 * sex, "ADHD": 0.3 * sex - 0.2 * age_z,
                     "ASD": 0.35 * sex - 0.2 * age_z}.get(d, 0.0)
        liability = genetic[d] + covariate + rng.normal(0, 0.1, 4)[pop] + rng.normal(0, 0.8, n)
        prevalence = max(PAPER_CASES[d] / PRESETS["paper"].n_subjects, p.min_prevalence)
        k = round(prevalence * n) if n != PRESETS["paper"].n_subjects else PAPER_CASES[d]
        cases = np.zeros(n, bool)
        cases[np.argsort(-liability, kind="stable")[:k]] = True
        diseases[d] = cases
    return diseases, effects, genetic


def _simulate_idps(rng, p: Preset, samples, variants, genotypes, diseases, disease_effects, signal: float = 1.0):
    """IDP volumes in mm^3 (samples x 154) and the planted disease -> IDP and SNP -> IDP effects (`signal`: the
    module docstring's K)."""
    n, k = samples.height, len(IDPS)
    sex = samples["sex"].to_numpy()
    age_z = (samples["age"].to_numpy() - 63) / 10.8
    height_z = (samples["height"].to_numpy() - 169) / 9
    head = 0.7 * (sex - 0.47) + 0.25 * height_z + rng.normal(0, 0.8, n)
    load = rng.uniform(0.5, 0.7, k)
    atrophy = -rng.uniform(0.2, 0.45, k)
    pop_shift = rng.normal(0, 0.1, (4, k))
    s = np.outer(head, load) + np.outer(age_z, atrophy) + pop_shift[samples["population"].to_numpy()]
    s += rng.normal(0, 0.6, (n, k))
    dis_rows = []
    for d, keywords in _DISEASE_REGIONS.items():
        hit = np.array([any(w in name for w in keywords) for name in IDPS])
        effect = np.where(hit, -rng.uniform(0.3, 0.7, k), 0.0)
        s += np.outer(diseases[d], effect)
        dis_rows.append(pl.DataFrame({"disease": d, "idp": np.array(IDPS)[hit], "effect_sd": effect[hit]}))
    idp_disease = pl.concat(dis_rows)
    # Direct SNP -> IDP effects, effect sizes log-uniform from barely detectable (0.03 SD) to obvious (0.3 SD):
    # - pleiotropic leads: each disease's strongest causal catalog SNPs (the catalog's top hits) act on one or
    #   two of that disease's regions, so the top-n% buckets hold planted pairs to score COMICAL against;
    # - other causal catalog SNPs of a disease on one of its regions (mostly outside the top-n% buckets);
    # - background (non-catalog) variants on any IDP: what a GWAS finds and disease-mediated pairs cannot.
    causal = disease_effects.filter(pl.col("causal") & pl.col("in_catalog"))
    index = {v: i for i, v in enumerate(variants["variant_id"].to_list())}
    n_lead, n_other, n_background = p.snp_idp_effects
    n_lead = round(n_lead * np.sqrt(signal))
    gain = np.sqrt(signal)  # 1.0 exactly at K = 1: the default cohort's bytes
    size = lambda: float(rng.choice([-1, 1]) * np.exp(rng.uniform(np.log(0.03), np.log(0.3))) * gain)  # noqa: E731
    regions = {d: idp_disease.filter(pl.col("disease") == d)["idp"].to_numpy() for d in PAIR_DISEASES}
    snp_rows = []
    for d in PAIR_DISEASES:
        own = causal.filter(pl.col("disease") == d).sort(pl.col("beta").abs(), descending=True)
        for snp in own["variant_id"][:n_lead]:
            for idp in rng.choice(regions[d], int(rng.integers(1, 3)), replace=False):
                snp_rows.append((snp, str(idp), d, size()))
    for _ in range(n_other):
        d = str(rng.choice(PAIR_DISEASES))
        snp = str(rng.choice(causal.filter(pl.col("disease") == d)["variant_id"].to_numpy()))
        snp_rows.append((snp, str(rng.choice(regions[d])), d, size()))
    clean_background = variants.filter(~pl.col("is_catalog") & (pl.col("planted_failure") == ""))["variant_id"]
    for snp in rng.choice(clean_background.to_numpy(), n_background, replace=False):
        snp_rows.append((str(snp), str(rng.choice(IDPS)), None, size()))
    snp_idp = pl.DataFrame(snp_rows, schema={"variant_id": pl.String, "idp": pl.String, "via_disease": pl.String,
                                             "effect_sd": pl.Float64}, orient="row")
    snp_idp = snp_idp.unique(["variant_id", "idp"], keep="first", maintain_order=True)
    cols = np.array([index[v] for v in snp_idp["variant_id"]])
    g = _standardized(genotypes, variants, cols)
    for j, (idp, effect) in enumerate(zip(snp_idp["idp"], snp_idp["effect_sd"])):
        s[:, IDPS.index(idp)] += effect * g[:, j]
    mean = np.array([_baseline_mm3(name, rng) for name in IDPS])
    volumes = mean * np.exp(LOG_VOLUME_SCALE * s)
    return volumes, idp_disease, snp_idp


def _add_polygenic_idps(rng, idps: np.ndarray, variants: pl.DataFrame, genotypes: np.ndarray, h2: float):
    """The IDPs with a polygenic part that is `h2` of each one's log-volume variance (module docstring), and its
    truth: the effects (per standardised allele count, on the log volume) and each IDP's realised share."""
    freq = variants["ancestral_freq"].to_numpy()
    clean = np.flatnonzero((variants["planted_failure"].to_numpy() == "") & (np.minimum(freq, 1 - freq) >= 0.01))
    chosen = np.sort(rng.choice(clean, min(IDP_POLYGENIC_VARIANTS, clean.size), replace=False))
    z = _standardized(genotypes, variants, chosen)
    beta = rng.normal(0, 1, (chosen.size, idps.shape[1]))
    genetic = z @ beta
    log_idp = np.log(idps)
    scale = np.sqrt(h2 / (1 - h2) * log_idp.var(0) / genetic.var(0))  # genetic variance h2 of the sum's
    beta, genetic = beta * scale, genetic * scale
    out = np.exp(log_idp + genetic)
    shares = genetic.var(0) / np.log(out).var(0)
    ids = variants["variant_id"].to_numpy()[chosen]
    effects = pl.DataFrame({"variant_id": np.repeat(ids, len(IDPS)), "idp": np.tile(IDPS, ids.size),
                            "beta_log_volume": beta.ravel()})
    return out, {"effects": effects, "h2": pl.DataFrame({"idp": IDPS, "h2_polygenic": shares}),
                 "n_variants": int(chosen.size)}


def _baseline_mm3(name: str, rng) -> float:
    if name not in FAST_IDPS:
        return _FIRST_MM3[next(r for r in _FIRST_MM3 if name.endswith(r))]
    if "Cerebellum" in name:
        return rng.uniform(1500, 9000)
    if any(r in name for r in ("Thalamus", "Caudate", "Putamen", "Pallidum", "Hippocampus", "Amygdala",
                               "Ventral_Striatum", "Brain_Stem")):
        return rng.uniform(400, 5000)
    return rng.uniform(1500, 22000)


def _plant_missingness_and_failures(rng, p: Preset, variants, samples, genotypes) -> np.ndarray:
    """Set missing calls (-127, bed-reader's int8 missing) and planted QC failures, in place."""
    n, m = genotypes.shape
    failure = variants["planted_failure"].to_numpy()
    sample_failure = np.full(n, "", dtype=object)
    chosen = rng.permutation(n)
    n_mind, n_het = p.qc_failures["samples"]["mind"], p.qc_failures["samples"]["het"]
    sample_failure[chosen[:n_mind]] = "mind"
    sample_failure[chosen[n_mind:n_mind + n_het]] = "het"
    propensity = np.minimum(rng.gamma(4.0, 0.25, n), 3.0)
    propensity[sample_failure == "mind"] = 10.0
    variant_rate = np.minimum(rng.beta(1.2, 60, m), 0.05)
    variant_rate[failure == "geno"] = rng.uniform(0.15, 0.3, (failure == "geno").sum())
    contaminated = np.flatnonzero(sample_failure == "het")
    for j in range(m):
        col = genotypes[:, j]
        if failure[j] == "hwe":  # genotyping error: 40% of heterozygotes called homozygous
            het = np.flatnonzero(col == 1)
            flip = het[rng.random(het.size) < 0.4]
            col[flip] = rng.choice(np.array([0, 2], np.int8), flip.size)
        col[contaminated[rng.random(contaminated.size) < 0.3]] = 1
        rate = variant_rate[j] * propensity if failure[j] != "geno" else np.full(n, variant_rate[j])
        col[rng.random(n) < np.minimum(rate, 0.5)] = -127
    return sample_failure.astype(str)


def _covariate_pcs(variants: pl.DataFrame, genotypes: np.ndarray, seed: int) -> np.ndarray:
    """UK Biobank ships genetic PCs; ours come from common background variants, thinned to <= 6000."""
    f = variants["ancestral_freq"].to_numpy()
    usable = np.flatnonzero(~variants["is_catalog"].to_numpy() & (np.minimum(f, 1 - f) > 0.05)
                            & (variants["planted_failure"].to_numpy() == ""))
    usable = usable[:: max(1, usable.size // 6000)]
    scores, _ = genotype_pcs(genotypes[:, usable], N_PCS, seed=seed)
    return scores / np.sqrt(genotypes.shape[0])


def _simulate_eprs(rng, genetic: dict) -> dict:
    """Enhanced PRS: standardized, correlated ~0.6 with the true genetic liability."""
    out = {}
    for d in EPRS_DISEASES:
        g = genetic[d] / genetic[d].std()
        score = 0.6 * g + 0.8 * rng.normal(0, 1, g.size)
        out[d] = (score - score.mean()) / score.std()
    return out


def _simulate_catalog(rng, variants: pl.DataFrame, effects: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The GWAS Catalog association download (v1.0.2, 38 columns) and what each of its rows truly is."""
    traits = load_trait_map()
    vid = variants["variant_id"].to_list()
    index = {v: i for i, v in enumerate(vid)}
    chrom, pos = variants["chrom"].to_numpy(), variants["pos"].to_numpy()
    a1, a2 = variants["allele1"].to_numpy(), variants["allele2"].to_numpy()
    listed = effects.filter(pl.col("in_catalog"))
    studies = {}
    for d in PAIR_DISEASES:
        names = traits.filter(pl.col("disease") == d)
        studies[d] = [dict(pubmed=int(rng.integers(20_000_000, 39_000_000)), year=int(rng.integers(2009, 2025)),
                           author=str(rng.choice(["Smith J", "Wang Y", "Jansen PR", "Howard DM", "Mullins N",
                                                 "Demontis D", "Kunkle BW", "Nalls MA", "Patsopoulos NA"])),
                           trait=names["trait"][t % names.height], uri=names["efo_uri"][t % names.height],
                           accession=f"GCST{int(rng.integers(1000, 99999)):06d}",
                           cases=int(rng.integers(2000, 120000)))
                      for t in range(6)]
    rows, truth = [], []

    def add(d, snps, chr_id, chr_pos, risk, pvalue, or_beta, kind, variant, causal, flipped, unknown):
        st = studies[d][int(rng.integers(0, 6))]
        mant, expo = _p_parts(pvalue)
        rows.append({
            "DATE ADDED TO CATALOG": f"{st['year'] + 1}-0{int(rng.integers(1, 10))}-1{int(rng.integers(0, 10))}",
            "PUBMEDID": str(st["pubmed"]), "FIRST AUTHOR": st["author"], "DATE": f"{st['year']}-06-01",
            "JOURNAL": "Nat Genet", "LINK": f"www.ncbi.nlm.nih.gov/pubmed/{st['pubmed']}",
            "STUDY": f"Genome-wide association study of {st['trait'].lower()}", "DISEASE/TRAIT": st["trait"],
            "INITIAL SAMPLE SIZE": f"{st['cases']:,} European ancestry cases, {st['cases'] * 4:,} European ancestry controls",
            "REPLICATION SAMPLE SIZE": "NA", "REGION": f"{chr_id}q{int(rng.integers(11, 35))}", "CHR_ID": chr_id,
            "CHR_POS": chr_pos, "REPORTED GENE(S)": "NR", "MAPPED_GENE": f"GENE{int(rng.integers(1, 20000))}",
            "UPSTREAM_GENE_ID": "", "DOWNSTREAM_GENE_ID": "", "SNP_GENE_IDS": "", "UPSTREAM_GENE_DISTANCE": "",
            "DOWNSTREAM_GENE_DISTANCE": "", "STRONGEST SNP-RISK ALLELE": risk, "SNPS": snps, "MERGED": "0",
            "SNP_ID_CURRENT": snps[2:] if snps.startswith("rs") and snps[2:].isdigit() else "",
            "CONTEXT": str(rng.choice(["intron_variant", "intergenic_variant", "missense_variant",
                                       "3_prime_UTR_variant"])),
            "INTERGENIC": "0", "RISK ALLELE FREQUENCY": "NR", "P-VALUE": f"{mant}E-{expo}",
            "PVALUE_MLOG": f"{-np.log10(mant * 10.0 ** -expo):.6g}", "P-VALUE (TEXT)": "",
            "OR or BETA": f"{or_beta:.3f}", "95% CI (TEXT)": f"[{or_beta * 0.95:.2f}-{or_beta * 1.05:.2f}]",
            "PLATFORM [SNPS PASSING QC]": "Illumina [7000000] (imputed)", "CNV": "N",
            "MAPPED_TRAIT": st["trait"].lower(), "MAPPED_TRAIT_URI": st["uri"], "STUDY ACCESSION": st["accession"],
            "GENOTYPING TECHNOLOGY": "Genome-wide genotyping array",
        })
        truth.append((len(rows) - 1, d, kind, variant, causal, flipped, unknown))

    for d in PAIR_DISEASES:
        rows_d = listed.filter(pl.col("disease") == d)
        strength = np.abs(rows_d["beta"].to_numpy())
        for v, beta, causal, s in zip(rows_d["variant_id"], rows_d["beta"], rows_d["causal"], strength):
            j = index[v]
            # True hits: stronger effects have smaller p; false hits sit between 1e-5 and 1e-9.
            mlog = 7.5 + 40 * s / strength.max() + rng.exponential(3) if causal else rng.uniform(5, 9)
            risk = (a1[j] if beta > 0 else a2[j]) if causal else (a1[j] if rng.random() < 0.5 else a2[j])
            flippable = len(risk) == 1 and {a1[j], a2[j]} not in ({"A", "T"}, {"C", "G"})
            flipped = flippable and rng.random() < 0.03
            unknown = rng.random() < 0.02
            shown = "?" if unknown else (risk.translate(_COMPLEMENT) if flipped else risk)
            snps = v if rng.random() > 0.01 else f"chr{chrom[j]}:{pos[j]}"
            or_value = float(np.exp(abs(beta) * 0.5)) if causal else float(rng.uniform(1.03, 1.15))
            add(d, snps, str(chrom[j]), str(pos[j]), f"{snps}-{shown}", 10.0 ** -mlog, or_value, "single", v,
                bool(causal), bool(flipped), bool(unknown))
        for kind in ("interaction", "haplotype", "not_genotyped"):
            for _ in range(max(1, rows_d.height // 100)):
                j, k = rng.choice(rows_d.height, 2, replace=False)
                v1, v2 = index[rows_d["variant_id"][int(j)]], index[rows_d["variant_id"][int(k)]]
                if kind == "not_genotyped":
                    rs = f"rs{int(rng.integers(200_000_000, 900_000_000))}"
                    add(d, rs, str(chrom[v1]), str(pos[v1] + 1), f"{rs}-A", 10 ** -rng.uniform(5, 12), 1.1, kind,
                        "", False, False, False)
                    continue
                sep = " x " if kind == "interaction" else "; "
                add(d, f"{vid[v1]}{sep}{vid[v2]}", f"{chrom[v1]}{sep}{chrom[v2]}", f"{pos[v1]}{sep}{pos[v2]}",
                    f"{vid[v1]}-{a1[v1]}{sep}{vid[v2]}-{a1[v2]}", 10 ** -rng.uniform(5, 12), 1.2, kind, "", False,
                    False, False)
    order = rng.permutation(len(rows))
    catalog = pl.DataFrame([rows[i] for i in order], schema={c: pl.String for c in _CATALOG_COLUMNS})
    truth_df = pl.DataFrame(truth, schema=["source_row", "disease", "kind", "variant_id", "causal", "strand_flipped",
                                          "risk_allele_unknown"], orient="row")
    position = np.empty(len(rows), np.int64)
    position[order] = np.arange(len(rows))
    truth_df = truth_df.with_columns(pl.Series("row", position[truth_df["source_row"].to_numpy()])).drop(
        "source_row").sort("row")
    return catalog, truth_df


def _p_parts(p: float) -> tuple[int, int]:
    """A p-value as the Catalog writes it: one significant digit, `2E-8`."""
    expo = int(np.ceil(-np.log10(p)))
    mant = int(np.clip(round(p * 10.0**expo), 1, 9))
    return mant, expo


def _write_bed(path: Path, samples: pl.DataFrame, variants: pl.DataFrame, genotypes: np.ndarray) -> None:
    eid = samples["eid"].cast(pl.String).to_list()
    to_bed(path, genotypes, properties={
        "fid": eid, "iid": eid, "father": ["0"] * len(eid), "mother": ["0"] * len(eid),
        "sex": (2 - samples["sex"].to_numpy()).tolist(), "pheno": ["-9"] * len(eid),  # plink: 1 male, 2 female
        "chromosome": variants["chrom"].cast(pl.String).to_list(), "sid": variants["variant_id"].to_list(),
        "cm_position": [0.0] * variants.height, "bp_position": variants["pos"].to_list(),
        "allele_1": variants["allele1"].to_list(), "allele_2": variants["allele2"].to_list(),
    }, num_threads=1)
