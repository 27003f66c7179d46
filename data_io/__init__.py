"""Every file format in and out: PLINK, eid-keyed tables, the GWAS Catalog, the cohort simulator."""

from comical.data_io.errors import InputError

__all__ = ["InputError"]
