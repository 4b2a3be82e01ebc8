#!/usr/bin/env bash
# The GPU checks of issue #5 as one script, for a session that is lent the device.
#
#   bash benchmarks/device_check.sh --prepare   # on the CPU machine: plans + wheels into .carry/ (~1 min)
#   bash benchmarks/device_check.sh             # on the device, with .carry carried; JSON into $OUT
#
# The device image has torch with CUDA, numpy and scipy but not cc3d (nor SimpleITK: the array path does not need it,
# bench_inference_gpu.py stands in a bare module), and no network: wheels come from .carry/wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_work/device}
BENCH="python benchmarks/bench_inference_gpu.py --plans .carry/plans_real.json"

if [ "${1:-}" = "--prepare" ]; then
    python benchmarks/bench_inference_gpu.py --make-plans .carry/plans_real.json > /dev/null
    for py in 3.10 3.11 3.12 3.13; do
        pip download -q --no-deps --only-binary=:all: --python-version "$py" connected-components-3d \
            -d .carry/wheels
    done
    pip download -q --no-deps tqdm -d .carry/wheels
    du -sh .carry
    exit 0
fi

mkdir -p "$OUT"
# pip from the carried wheels; without pip, unpack the wheel for this Python onto PYTHONPATH
TAG=$(python -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
export PYTHONPATH="$PWD/.carry/site${PYTHONPATH:+:$PYTHONPATH}"
for mod_pkg in cc3d:connected-components-3d tqdm:tqdm; do
    mod=${mod_pkg%%:*}; pkg=${mod_pkg#*:}
    python -c "import $mod" 2>/dev/null && continue
    pip install -q --no-index --find-links .carry/wheels "$pkg" 2>/dev/null || {
        whl=$(ls .carry/wheels/"${pkg//-/_}"-*-"$TAG"-*.whl .carry/wheels/"${pkg//-/_}"-*-py3-none-any.whl 2>/dev/null | head -1)
        python -m zipfile -e "$whl" .carry/site
    }
    python -c "import $mod"
done
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv | tee "$OUT/nvidia_smi.csv"
# default plans and options; the CPU fp32 run of the same weights checks the fp16 labels
$BENCH --check-cpu --out "$OUT/default.json"
# where the memory goes: cuDNN autotuning off, the default allocator, two windows per forward pass
$BENCH --cudnn-benchmark 0 --out "$OUT/cudnn_benchmark_off.json"
$BENCH --alloc-conf '' --out "$OUT/default_allocator.json"
$BENCH --windows-per-batch 2 --out "$OUT/two_windows.json"
# worst case: no roi crop, the organ model on the whole body
$BENCH --crops whole --out "$OUT/whole_body.json"
python - "$OUT" <<'PY'
import json, pathlib, sys
for p in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    r = json.loads(p.read_text())
    print(f"{p.stem:22s} median {r['median_s']:.3f} s  max_allocated {r.get('max_memory_allocated_mb')} MB  "
          f"reserved {r.get('max_memory_reserved_mb')} MB  sampled {r.get('peak_device_used_mb_sampled')} MB  "
          f"whole run {r.get('peak_device_used_mb_sampled_whole_run')} MB  context {r.get('context_used_mb')} MB  allocated before a case {r.get('weights_and_context_allocated_mb')} MB")
PY
