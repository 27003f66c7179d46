"""Paper 002 (CGNI): working-memory groups and the SNP panel, the three training stages, and the post-analysis."""
