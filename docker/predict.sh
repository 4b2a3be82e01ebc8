#!/bin/sh
# FLARE-protocol entry point: every image in /workspace/inputs (CASE_0000.nii.gz) -> a mask
# /workspace/outputs/CASE.nii.gz, with the model bundle baked into the image at /workspace/model.zip or
# mounted there. Paths, device and extra flags can be overridden through the environment (CI runs this
# script without Docker that way):
#   AUTOSEG_INPUTS  AUTOSEG_OUTPUTS  AUTOSEG_MODEL  AUTOSEG_DEVICE (auto|cuda|cpu)  AUTOSEG_EXTRA_ARGS  AUTOSEG_CMD
set -eu
inputs="${AUTOSEG_INPUTS:-/workspace/inputs}"
outputs="${AUTOSEG_OUTPUTS:-/workspace/outputs}"
model="${AUTOSEG_MODEL:-/workspace/model.zip}"
if [ ! -f "$model" ]; then
    echo "predict.sh: no model bundle at $model (put one at docker/model.zip before 'docker build', or mount it: -v \$PWD/model.zip:/workspace/model.zip)" >&2
    exit 2
fi
if [ ! -d "$inputs" ]; then
    echo "predict.sh: input folder $inputs not found (mount it: -v \$PWD/inputs:/workspace/inputs)" >&2
    exit 2
fi
mkdir -p "$outputs"
# shellcheck disable=SC2086  # AUTOSEG_EXTRA_ARGS is a list of flags
exec ${AUTOSEG_CMD:-autoseg} run_inference -i "$inputs" -o "$outputs" -m "$model" \
    --device "${AUTOSEG_DEVICE:-auto}" ${AUTOSEG_EXTRA_ARGS:-}
