"""Per-disease SNP sets from the GWAS Catalog: rows matched to the genotypes, harmonised, top n% by p-value.

For each catalog row: its trait maps to a diagnosis column (shipped trait map, or the user's); rows naming no
single variant (interactions `rs1 x rs2`, haplotypes `rs1; rs2`) are skipped; the variant is matched by rsID,
else by chromosome and position; it must have passed QC; its risk allele is harmonised against the bim alleles
(strand flips of non-palindromic SNPs are resolved; a `?` or missing allele is reported as unknown and the row
kept: pair-making needs the variant, not the direction). A risk allele that fits neither strand drops the row
(`allele_mismatch`): it is most often a position-only match on another genome build. Then, per disease, each
SNP counts once at its best p-value, and the top `top_n_perc` percent (rounded up, at least one) are selected.
"""

from __future__ import annotations

import math

import polars as pl

from comical.data_io.errors import InputError

ROW_STATUSES = ["selected", "below_top_n", "not_single_variant", "trait_not_mapped", "not_in_genotypes", "failed_qc",
                "allele_mismatch"]


def catalog_snp_sets(catalog: pl.DataFrame, variants: pl.DataFrame, trait_map: pl.DataFrame, *,
                     top_n_perc: float, diseases: list[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Select each disease's SNPs. Returns (selected, rows).

    `variants`: the bim table with a boolean `passed_qc`. `selected`: `disease, variant_id, p_value, rank,
    risk_allele, risk_allele_status` for the chosen SNPs. `rows`: every catalog row with its `status` (one of
    ROW_STATUSES) and `risk_allele_status` (match, strand_flip, unknown, mismatch), the report's source. Rows
    whose risk allele is a mismatch are `allele_mismatch`: never selected, nor counted in a disease's top n%.
    """
    if not 0 < top_n_perc <= 100:
        raise InputError(f"--top-n-perc {top_n_perc}: expected a percentage in (0, 100]")
    rows = catalog.with_row_index("row").select(
        "row", pl.col("DISEASE/TRAIT").alias("trait"), pl.col("SNPS").str.strip_chars().alias("snps"),
        pl.col("CHR_ID").alias("chr_id"), pl.col("CHR_POS").alias("chr_pos"),
        pl.col("STRONGEST SNP-RISK ALLELE").alias("risk"), "p_value",
        *([pl.col("MAPPED_TRAIT_URI").alias("uri")] if "MAPPED_TRAIT_URI" in catalog.columns else [pl.lit(None, pl.String).alias("uri")]),
    )
    by_trait = trait_map.select("trait", pl.col("disease").alias("by_trait")).unique("trait")
    by_uri = trait_map.select(pl.col("efo_uri").alias("uri"), pl.col("disease").alias("by_uri")).unique("uri")
    rows = rows.join(by_trait, on="trait", how="left").join(by_uri, on="uri", how="left").with_columns(
        pl.coalesce("by_trait", "by_uri").alias("disease")).drop("by_trait", "by_uri")
    single = ~pl.col("snps").str.contains(r"[;,]| x ")
    bim = variants.select("variant_id", "chrom", "pos", "allele1", "allele2", "passed_qc")
    by_id = rows.join(bim, left_on="snps", right_on="variant_id", how="left").with_columns(
        pl.when(pl.col("allele1").is_not_null()).then(pl.col("snps")).alias("variant_id"))
    by_pos = bim.with_columns(pl.col("chrom").cast(pl.String), pl.col("pos").cast(pl.String))
    unmatched = by_id.filter(pl.col("variant_id").is_null()).drop("variant_id", "chrom", "pos", "allele1", "allele2",
                                                                  "passed_qc")
    positional = unmatched.join(by_pos, left_on=["chr_id", "chr_pos"], right_on=["chrom", "pos"], how="left")
    matched = pl.concat([by_id.filter(pl.col("variant_id").is_not_null()).drop("chrom", "pos")
                         .with_columns(pl.lit("rsid").alias("matched_by")),
                         positional.select(by_id.drop("chrom", "pos").columns).with_columns(
                             pl.when(pl.col("variant_id").is_not_null()).then(pl.lit("position"))
                             .otherwise(pl.lit(None, pl.String)).alias("matched_by"))]).sort("row")
    risk_allele = pl.col("risk").str.split("-").list.last().str.strip_chars().str.to_uppercase()
    matched = matched.with_columns(risk_allele.alias("risk_allele")).with_columns(_harmonise())
    status = (pl.when(pl.col("disease").is_null()).then(pl.lit("trait_not_mapped"))
              .when(~single).then(pl.lit("not_single_variant"))
              .when(pl.col("variant_id").is_null()).then(pl.lit("not_in_genotypes"))
              .when(~pl.col("passed_qc")).then(pl.lit("failed_qc"))
              .when(pl.col("risk_allele_status") == "mismatch").then(pl.lit("allele_mismatch"))
              .otherwise(pl.lit("eligible")))
    matched = matched.with_columns(status.alias("status"))
    eligible = matched.filter((pl.col("status") == "eligible") & pl.col("disease").is_in(diseases))
    best = eligible.sort(["p_value", "row"]).unique(["disease", "variant_id"], keep="first", maintain_order=True)
    best = best.with_columns(pl.int_range(pl.len()).over("disease").alias("rank"),
                             pl.len().over("disease").alias("n_disease"))
    take = best.with_columns(pl.col("n_disease").map_elements(lambda n: max(1, math.ceil(n * top_n_perc / 100)),
                                                              return_dtype=pl.Int64).alias("n_take"))
    selected = take.filter(pl.col("rank") < pl.col("n_take")).select(
        "disease", "variant_id", "p_value", "rank", "risk_allele", "risk_allele_status", "row")
    rows_out = matched.with_columns(
        pl.when(pl.col("row").is_in(selected["row"].implode())).then(pl.lit("selected"))
        .when(pl.col("status") == "eligible").then(pl.lit("below_top_n"))
        .otherwise(pl.col("status")).alias("status"))
    return selected.drop("row").sort("disease", "rank"), rows_out.select(
        "row", "trait", "disease", "snps", "variant_id", "matched_by", "p_value", "risk_allele", "risk_allele_status",
        "status")


def build_check(catalog: pl.DataFrame, variants: pl.DataFrame) -> dict:
    """How many catalog rows matched by rsID sit at the genotypes' position of that rsID. The Catalog's positions are
    GRCh38; where most differ, the genotypes are on another build (often GRCh37), and matches by position alone
    would pair the wrong variants. `other_build` is True when at least 20 rows compare and under half agree."""
    rows = catalog.select(pl.col("SNPS").str.strip_chars().alias("variant_id"),
                          pl.col("CHR_ID").cast(pl.String).alias("chr_id"),
                          pl.col("CHR_POS").cast(pl.String).alias("chr_pos")).filter(pl.col("chr_pos").is_not_null())
    both = rows.join(variants.select("variant_id", pl.col("chrom").cast(pl.String), pl.col("pos").cast(pl.String)),
                     on="variant_id")
    same = int(((both["chrom"] == both["chr_id"]) & (both["pos"] == both["chr_pos"])).sum())
    return {"rsid_matches_compared": both.height, "same_position": same,
            "other_build": both.height >= 20 and same < both.height / 2}


def _complement(allele: pl.Expr) -> pl.Expr:
    return (allele.str.replace_all("A", "t").str.replace_all("T", "a").str.replace_all("C", "g")
            .str.replace_all("G", "c").str.to_uppercase())


def _harmonise() -> list[pl.Expr]:
    """The risk allele on the bim's strand, and how it was found."""
    a = pl.col("risk_allele")
    flipped = _complement(a)
    on_bim = (a == pl.col("allele1")) | (a == pl.col("allele2"))
    palindromic = _complement(pl.col("allele1")) == pl.col("allele2")
    flip_fits = ((flipped == pl.col("allele1")) | (flipped == pl.col("allele2"))) & ~palindromic
    status = (pl.when(a.is_null() | (a == "?") | (a == "")).then(pl.lit("unknown"))
              .when(pl.col("allele1").is_null()).then(pl.lit(None, pl.String))
              .when(on_bim).then(pl.lit("match"))
              .when(flip_fits).then(pl.lit("strand_flip"))
              .otherwise(pl.lit("mismatch")))
    allele = pl.when(status == "match").then(a).when(status == "strand_flip").then(flipped)
    return [allele.alias("risk_allele"), status.alias("risk_allele_status")]


def snp_set_report(rows: pl.DataFrame, selected: pl.DataFrame, diseases: list[str]) -> dict:
    """Counts per status and per disease, and the diseases left with no SNP (to warn about)."""
    counts = dict(zip(*rows["status"].value_counts().sort("status").to_dict(as_series=False).values()))
    alleles = rows.filter(pl.col("variant_id").is_not_null())["risk_allele_status"].value_counts()
    per_disease = {d: selected.filter(pl.col("disease") == d).height for d in diseases}
    by_key = rows.filter(pl.col("matched_by").is_not_null())["matched_by"].value_counts()
    return {"rows_by_status": {s: int(counts.get(s, 0)) for s in ROW_STATUSES},
            "rows_matched_by": {k: int(dict(zip(by_key["matched_by"], by_key["count"])).get(k, 0))
                                for k in ("rsid", "position")},
            "risk_allele_status": dict(zip(alleles["risk_allele_status"], map(int, alleles["count"]))),
            "snps_per_disease": per_disease,
            "diseases_without_snps": [d for d, n in per_disease.items() if n == 0]}
