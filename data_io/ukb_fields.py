"""The cohort's column vocabulary: UK Biobank T1 IDP names, diagnoses, ePRS and covariates."""

from __future__ import annotations

# Harvard-Oxford cortical atlas regions, as FSL FAST grey-matter volumes are named in UK Biobank (fields 25782-25920).
_CORTICAL = [
    "Frontal_Pole", "Insular_Cortex", "Superior_Frontal_Gyrus", "Middle_Frontal_Gyrus",
    "Inferior_Frontal_Gyrus_pars_triangularis", "Inferior_Frontal_Gyrus_pars_opercularis", "Precentral_Gyrus",
    "Temporal_Pole", "Superior_Temporal_Gyrus_anterior_division", "Superior_Temporal_Gyrus_posterior_division",
    "Middle_Temporal_Gyrus_anterior_division", "Middle_Temporal_Gyrus_posterior_division",
    "Middle_Temporal_Gyrus_temporooccipital_part", "Inferior_Temporal_Gyrus_anterior_division",
    "Inferior_Temporal_Gyrus_posterior_division", "Inferior_Temporal_Gyrus_temporooccipital_part",
    "Postcentral_Gyrus", "Superior_Parietal_Lobule", "Supramarginal_Gyrus_anterior_division",
    "Supramarginal_Gyrus_posterior_division", "Angular_Gyrus", "Lateral_Occipital_Cortex_superior_division",
    "Lateral_Occipital_Cortex_inferior_division", "Intracalcarine_Cortex", "Frontal_Medial_Cortex",
    "Juxtapositional_Lobule_Cortex", "Subcallosal_Cortex", "Paracingulate_Gyrus", "Cingulate_Gyrus_anterior_division",
    "Cingulate_Gyrus_posterior_division", "Precuneous_Cortex", "Cuneal_Cortex", "Frontal_Orbital_Cortex",
    "Parahippocampal_Gyrus_anterior_division", "Parahippocampal_Gyrus_posterior_division", "Lingual_Gyrus",
    "Temporal_Fusiform_Cortex_anterior_division", "Temporal_Fusiform_Cortex_posterior_division",
    "Temporal_Occipital_Fusiform_Cortex", "Occipital_Fusiform_Gyrus", "Frontal_Operculum_Cortex",
    "Central_Opercular_Cortex", "Parietal_Operculum_Cortex", "Planum_Polare", "Heschls_Gyrus", "Planum_Temporale",
    "Supracalcarine_Cortex", "Occipital_Pole",
]
_SUBCORTICAL_GM = ["Thalamus", "Caudate", "Putamen", "Pallidum", "Hippocampus", "Amygdala", "Ventral_Striatum"]
_CEREBELLUM_LR = ["I_IV", "V", "VI", "Crus_I", "Crus_II", "VIIb", "VIIIa", "VIIIb", "IX", "X"]
_CEREBELLUM_VERMIS = ["VI", "Crus_I", "Crus_II", "VIIb", "VIIIa", "VIIIb", "IX", "X"]
_FIRST = ["Thalamus", "Caudate", "Putamen", "Pallidum", "Hippocampus", "Amygdala", "Accumbens"]


def _fast_names() -> list[str]:
    names = [f"Volume_of_grey_matter_in_{side}_{r}" for r in _CORTICAL for side in ("Left", "Right")]
    names += [f"Volume_of_grey_matter_in_{side}_{r}" for r in _SUBCORTICAL_GM for side in ("Left", "Right")]
    names.append("Volume_of_grey_matter_in_Brain_Stem")
    names += [f"Volume_of_grey_matter_in_{side}_{r}_Cerebellum" for r in _CEREBELLUM_LR for side in ("Left", "Right")]
    names += [f"Volume_of_grey_matter_in_Vermis_{r}_Cerebellum" for r in _CEREBELLUM_VERMIS]
    return names


def _first_names() -> list[str]:
    names = [f"Volume_of_{side}_{r}" for r in _FIRST for side in ("Left", "Right")]
    return names + ["Volume_of_Brain_Stem_4th_Ventricle"]


FAST_IDPS: list[str] = _fast_names()  # 139 FAST grey-matter ROI volumes (mm^3)
FIRST_IDPS: list[str] = _first_names()  # 15 FIRST subcortical volumes (mm^3)
IDPS: list[str] = FAST_IDPS + FIRST_IDPS

DISEASES = ["AD", "ADHD", "ASD", "BD", "CBVD", "MD", "MS", "PD", "Stroke", "SZ", "UD"]
PAIR_DISEASES = ["AD", "ADHD", "BD", "CBVD", "MD", "MS", "PD", "UD"]  # the eight the paper makes pairs from
EPRS_DISEASES = ["AD", "BD", "MS", "PD", "SZ"]
N_PCS = 40
COVARIATES = ["age", "sex", "height", "bmi", "smoking"] + [f"PC{i}" for i in range(1, N_PCS + 1)]

# Paper 000, Table 2: cases among its 40,426 subjects.
PAPER_CASES = {"AD": 12, "ADHD": 17, "ASD": 7, "BD": 127, "CBVD": 489, "MD": 10, "MS": 141, "PD": 85,
               "Stroke": 489, "SZ": 55, "UD": 4107}

assert len(FAST_IDPS) == 139 and len(FIRST_IDPS) == 15
