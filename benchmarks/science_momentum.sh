#!/bin/bash
# Paper 003's science rows (SCIENCE.md, "T1/T2 momentum contrast"): the mini cohort with T1/T2 volumes at 8 mm, the
# joint momentum model, its single-modality counterparts and the autoencoder (15 epochs each), then the evaluation.
#   bash benchmarks/science_momentum.sh WORK      (about 25 minutes on 2 cores)
set -euo pipefail
WORK=${1:?usage: science_momentum.sh WORK}
mkdir -p "$WORK"
[ -f "$WORK/cohort/manifest.json" ] || comical simulate --preset mini --seed 0 --images t1,t2 --voxel-mm 8 --out "$WORK/cohort"
for task in momentum-t1t2 momentum-t1 momentum-t2 autoencoder-t1t2; do
  comical train --task "$task" --cohort "$WORK/cohort" --out "$WORK/$task" --workers 1 --epochs 15 --batch-size 32 --force
done
comical evaluate momentum --runs "joint=$WORK/momentum-t1t2,t1=$WORK/momentum-t1,t2=$WORK/momentum-t2,autoencoder=$WORK/autoencoder-t1t2" \
  --cohort "$WORK/cohort" --out "$WORK/evaluation" --force
