"""Statistical genetics every paper uses: QC, PheWAS, GWAS (its statistics, plots and clumping), heritability."""
