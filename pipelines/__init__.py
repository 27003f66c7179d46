"""The science steps as functions over tables: QC, PheWAS, pair-making, GWAS, associations."""
