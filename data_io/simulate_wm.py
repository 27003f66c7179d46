"""Simulated working memory (paper 002): a backward digit span per subject, a disclosed SNP panel, and the truth.

What the cohort gets (`write_working_memory`, called by the cohort simulator):
- `cognition.csv`: eid, wm_digits: the maximum number of digits remembered correctly in the backward digit span
  (UK Biobank field 20240, 2-12); empty for the third of subjects who did not take the test (UK Biobank: 26,534 of
  about 40,000 imaged participants did);
- `wm_panel.txt`: the candidate panel, one variant ID per line (plink's --extract format): about 1,060 variants
  (paper 002 selects 1,060 brain-eQTL SNPs in the amyloid protein-interaction network; here: every AD catalog
  variant plus random others), of which a minority are causal;
- truth/wm_snp_effects.parquet (variant_id, causal, beta: effect of one standardised allele count on the liability;
  ad_causal: one of AD's causal catalog variants, which with images also drive the image latent),
  truth/wm_regions.parquet (idp, weight) and truth/wm.json (the model and its variance shares).

The trait: a liability = age (older: lower) + genetics (the causal panel variants' standardised true genotypes) +
regional grey matter (each planted region's log volume relative to the subject's mean over all IDPs, so it is the
region and not head size that counts; the IDPs are what the simulated images scale each parcel's grey matter by) +
noise, each part scaled to its variance share; the span is the liability's rank cut at a fixed distribution of
2-12 in which 2-5 and 9-12 each hold about 10% (paper 002: 5,469 of 26,534 in the two groups).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from comical.data_io.ukb_fields import IDPS

PANEL_SIZE = 1060
N_CAUSAL = 40  # causal panel variants: a minority
N_CAUSAL_AD = 10  # of which AD's causal catalog variants (they also drive the image latent)
SHARES = {"age": 0.25, "genetic": 0.15, "regions": 0.25, "noise": 0.35}  # of the liability's variance
TESTED = 0.66  # share of subjects with a digit span
# paper 002's regions (Table 5, Fig. 3) among our IDPs
REGIONS = ["Volume_of_grey_matter_in_Left_VI_Cerebellum", "Volume_of_grey_matter_in_Left_Insular_Cortex",
           "Volume_of_grey_matter_in_Left_Putamen", "Volume_of_grey_matter_in_Left_Caudate",
           "Volume_of_grey_matter_in_Right_Lateral_Occipital_Cortex_inferior_division",
           "Volume_of_grey_matter_in_Right_Cuneal_Cortex",
           "Volume_of_grey_matter_in_Left_Middle_Temporal_Gyrus_posterior_division"]
# P(span = 2..12) among those tested
DIGITS = np.arange(2, 13)
DIGIT_SHARES = np.array([0.5, 1.5, 3, 5, 22, 32, 26, 6, 2.5, 1, 0.5]) / 100
LOW, HIGH = (2, 5), (9, 12)  # paper 002 section II.A: the two groups; the rest are left out


def wm_group(digits: np.ndarray) -> np.ndarray:
    """0 (low: 2-5), 1 (high: 9-12), -1 (between, or not tested: NaN)."""
    digits = np.asarray(digits, float)
    return np.where((digits >= LOW[0]) & (digits <= LOW[1]), 0,
                    np.where((digits >= HIGH[0]) & (digits <= HIGH[1]), 1, -1)).astype(np.int8)


def relative_volumes(idps: np.ndarray) -> np.ndarray:
    """Each IDP's standardised log volume minus the subject's mean over all IDPs (subjects x IDPs): a region against
    the subject's whole brain, so it is the region and not head size that counts; the regional part of the trait."""
    log_idp = np.log(idps)
    z = (log_idp - log_idp.mean(0)) / log_idp.std(0)
    return z - z.mean(1, keepdims=True)


def signal_shares(signal: float) -> dict[str, float]:
    """SHARES with the genetic and regional parts x `signal` (the cohort's --signal K), rescaled to sum to 1."""
    if signal == 1:
        return dict(SHARES)
    raw = {k: v * (signal if k in ("genetic", "regions") else 1.0) for k, v in SHARES.items()}
    return {k: v / sum(raw.values()) for k, v in raw.items()}


def write_working_memory(out: Path, rng: np.random.Generator, *, eid: np.ndarray, age: np.ndarray,
                         genotypes: np.ndarray, variants: pl.DataFrame, disease_effects: pl.DataFrame,
                         idps: np.ndarray, signal: float = 1.0) -> None:
    """Write cognition.csv, wm_panel.txt and the truth files into the cohort folder `out` (see the module).
    `genotypes`: the true allele counts (samples x variants), before calls go missing; `signal`: `signal_shares`."""
    shares = signal_shares(signal)
    ids = variants["variant_id"].to_numpy()
    freq = variants["ancestral_freq"].to_numpy()
    ad = disease_effects.filter((pl.col("disease") == "AD") & pl.col("in_catalog"))
    ad_rows = np.flatnonzero(np.isin(ids, ad["variant_id"].to_numpy()))
    others = rng.permutation(np.setdiff1d(np.arange(len(ids)), ad_rows))
    size = min(PANEL_SIZE, len(ids) // 2)
    panel = np.sort(np.r_[ad_rows, others[:max(0, size - ad_rows.size)]])
    # causal: AD's causal catalog variants (up to N_CAUSAL_AD) and random common, clean panel variants
    ad_causal = np.flatnonzero(np.isin(ids, ad.filter(pl.col("causal"))["variant_id"].to_numpy()))
    ad_causal = rng.permutation(ad_causal)[:N_CAUSAL_AD]
    clean = (variants["planted_failure"].to_numpy() == "") & (np.minimum(freq, 1 - freq) >= 0.05)
    pool = rng.permutation(np.setdiff1d(panel[clean[panel]], ad_causal))
    causal = np.sort(np.r_[ad_causal, pool[:N_CAUSAL - ad_causal.size]])
    g = (genotypes[:, causal] - 2 * freq[causal]) / np.sqrt(2 * freq[causal] * (1 - freq[causal]))
    beta = rng.normal(0, 1, causal.size)
    genetic = g @ beta
    scale = np.sqrt(shares["genetic"] / genetic.var())
    beta, genetic = beta * scale, genetic * scale

    relative = relative_volumes(idps)
    weights = rng.uniform(0.5, 1.0, len(REGIONS))
    regional = relative[:, [IDPS.index(r) for r in REGIONS]] @ weights
    regional = (regional - regional.mean()) / regional.std() * np.sqrt(shares["regions"])
    age_z = (age - age.mean()) / age.std()
    liability = (-np.sqrt(shares["age"]) * age_z + genetic + regional
                 + rng.normal(0, np.sqrt(shares["noise"]), len(eid)))
    rank = np.argsort(np.argsort(liability, kind="stable"), kind="stable") / len(eid)
    digits = DIGITS[np.searchsorted(np.cumsum(DIGIT_SHARES)[:-1], rank, side="right")].astype(float)
    digits[rng.random(len(eid)) >= TESTED] = np.nan

    pl.DataFrame({"eid": eid, "wm_digits": pl.Series(digits).cast(pl.Int64, strict=False)}).write_csv(
        out / "cognition.csv")
    (out / "wm_panel.txt").write_text("".join(f"{v}\n" for v in ids[panel]))
    truth = out / "truth"
    truth.mkdir(exist_ok=True)
    effect = np.zeros(panel.size)
    effect[np.searchsorted(panel, causal)] = beta
    pl.DataFrame({"variant_id": ids[panel], "causal": effect != 0, "beta": effect,
                  "ad_causal": np.isin(panel, ad_causal)}).write_parquet(truth / "wm_snp_effects.parquet")
    pl.DataFrame({"idp": REGIONS, "weight": weights}).write_parquet(truth / "wm_regions.parquet")
    (truth / "wm.json").write_text(json.dumps({
        "trait": "wm_digits (cognition.csv): backward digit span 2-12, UK Biobank field 20240",
        "liability": "-age_z + genetic + regions + noise, each part scaled to its variance share",
        "variance_shares": shares, "tested_share": TESTED,
        "genetic": f"{causal.size} causal variants of the {panel.size} in wm_panel.txt ({ad_causal.size} of them AD's "
                   "causal catalog variants): standardised true allele counts x beta (wm_snp_effects.parquet)",
        "regions": "weighted sum of each region's standardised log volume minus the subject's mean over all IDPs "
                   "(wm_regions.parquet)",
        "digit_shares": dict(zip(DIGITS.tolist(), DIGIT_SHARES.tolist())),
        "groups": {"low": list(LOW), "high": list(HIGH)}}, indent=2) + "\n")
