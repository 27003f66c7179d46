#!/usr/bin/env bash
# SCIENCE.md's downstream rows (paper 000 Figs. 5-6, Table 3): outcome prediction and risk scores from the frozen
# encoders of the paper-cohort run that benchmarks/science_comical.sh makes (8,000 subjects, --top-n-perc 5).
#   bash benchmarks/science_downstream.sh WORK        (WORK as given to science_comical.sh)
set -euo pipefail
work=${1:?work folder}
run=$work/run5-real
[ -f "$run/model/model.json" ] && grep -q '"task"' "$run/model/model.json" || \
  comical train --pairs "$work/pairs5-real" --out "$run" --workers 2 --zero-stage 2 --force
comical predict --run "$run" --cohort "$work/cohort" --out "$work/predict5" --force
comical riskscore --run "$run" --cohort "$work/cohort" --out "$work/riskscore5" --force
