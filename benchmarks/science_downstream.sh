#!/usr/bin/env bash
# SCIENCE.md's downstream rows (paper 000 Figs. 5-6, Table 3): outcome prediction and risk scores from the frozen
# encoders of a paper-cohort store that benchmarks/science_comical.sh made (8,000 subjects).
#   bash benchmarks/science_downstream.sh WORK [TOP]     (WORK as given to science_comical.sh; TOP 1 or 5, default 1)
# The store is trained again into WORK/run$TOP-v2 (runs made before models named their task cannot be loaded).
set -euo pipefail
work=${1:?work folder}; top=${2:-1}
run=$work/run$top-v2
[ -f "$run/test_metrics.json" ] || \
  comical train --pairs "$work/pairs$top-real" --out "$run" --workers 2 --zero-stage 2 --force
comical predict --run "$run" --cohort "$work/cohort" --out "$work/predict$top" --force
comical riskscore --run "$run" --cohort "$work/cohort" --out "$work/riskscore$top" --force
