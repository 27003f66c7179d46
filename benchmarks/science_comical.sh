#!/usr/bin/env bash
# SCIENCE.md's COMICAL rows: real and null (IDP values permuted) stores at --top-n-perc 1 and 5, trained alike,
# then both association tests and the truth comparison with a GWAS of the same pairs.
#   bash benchmarks/science_comical.sh WORK [PRESET] [MAX_SUBJECTS]     (default: paper, 8000 subjects)
set -euo pipefail
work=${1:?work folder}; preset=${2:-paper}; max=${3:-8000}
mkdir -p "$work"
[ -d "$work/cohort" ] || comical simulate --preset "$preset" --seed 0 --out "$work/cohort"
[ -d "$work/qc" ] || comical qc --cohort "$work/cohort" --out "$work/qc"
for top in 5 1; do
  for kind in real null; do
    store=$work/pairs$top-$kind run=$work/run$top-$kind
    extra=(); [ "$kind" = null ] && extra=(--permute-idps 1 --phewas "$work/pairs$top-real/phewas")
    [ -d "$store" ] || comical pairs --cohort "$work/cohort" --qc "$work/qc" --top-n-perc "$top" \
        --max-subjects "$max" --out "$store" "${extra[@]}"
    [ -f "$run/test_metrics.json" ] || comical train --pairs "$store" --out "$run" --workers 2 --zero-stage 2 --force
    comical associate --run "$run" --test paper
    comical associate --run "$run"
  done
done
