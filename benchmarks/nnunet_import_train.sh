#!/usr/bin/env bash
# Train the two nnU-Net v2.8.1 models that benchmarks/bench_nnunet_import.py imports into autoseg:
# a PlainConvUNet and a ResidualEncoderUNet (ResEnc), stock networks (every bias trained), on the
# phantom dataset in $WORK/raw. A long job without timings: run it niced, without the CPU lock.
#   WORK=bench_work/nnunet_import nice -n 19 bash benchmarks/nnunet_import_train.sh
set -euo pipefail
WORK=${WORK:-bench_work/nnunet_import}
PEER=${AUTOSEG_BENCH_PEER_VENV:-$HOME/.cache/autoseg-bench/nnunet-venv}
PY=${PY:-.venv/bin/python}
EPOCHS=${EPOCHS:-2}
ITERS=${ITERS:-30}
RESENC_EPOCHS=${RESENC_EPOCHS:-1}
RESENC_ITERS=${RESENC_ITERS:-20}
export nnUNet_raw=$WORK/raw nnUNet_preprocessed=$WORK/preprocessed nnUNet_results=$WORK/results
export nnUNet_extTrainer=benchmarks/peer/trainers PYTHONUNBUFFERED=1 AUTOSEG_BENCH_VAL_ITERS=1 nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-2}
PRE=$nnUNet_preprocessed/Dataset501_Phantom
if [ ! -f "$PRE/nnUNetPlans.json" ]; then
  "$PEER/bin/nnUNetv2_plan_and_preprocess" -d 501 -c 3d_fullres -np 2
fi
# The --quality bench plans (patch 32x64x64, features x0.5, spacing 4x2x2 mm) and a ResEnc twin of them.
"$PY" -m benchmarks.nnunet_import_plans "$PRE"
if [ ! -d "$PRE/nnUNetPlansBench_3d_fullres" ] || [ -z "$(ls -A "$PRE/nnUNetPlansBench_3d_fullres")" ]; then
  "$PEER/bin/nnUNetv2_preprocess" -d 501 -plans_name nnUNetPlansBench -c 3d_fullres -np 2
fi
for P in nnUNetPlansBench nnUNetPlansBenchResEnc; do
  if [ $P = nnUNetPlansBenchResEnc ]; then EPOCHS=$RESENC_EPOCHS ITERS=$RESENC_ITERS; fi
  if [ ! -f "$nnUNet_results/Dataset501_Phantom/nnUNetTrainerAutosegBenchStock__${P}__3d_fullres/fold_all/checkpoint_final.pth" ]; then
    AUTOSEG_BENCH_EPOCHS=$EPOCHS AUTOSEG_BENCH_ITERS=$ITERS "$PEER/bin/nnUNetv2_train" 501 3d_fullres all \
      -tr nnUNetTrainerAutosegBenchStock -p $P -device cpu
  fi
done
