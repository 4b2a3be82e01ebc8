#!/usr/bin/env bash
# The refinement benchmark as short locked jobs (each a few minutes on 2 CPU cores):
#   bash benchmarks/bench_refinement.sh WORK [SEEDS...]     then: python -m benchmarks.bench_refinement report --work WORK
set -euo pipefail
work=${1:?usage: bench_refinement.sh WORK [SEEDS...]}; shift
seeds=${*:-0 1 2}
py=${PYTHON:-python}
run() { flock /tmp/autoseg-cpu.lock nice -n 10 "$py" -m benchmarks.bench_refinement "$@" --work "$work"; }
[ -f "$work/preprocessed/Dataset515_RefineBench/plans.json" ] || run prepare
for s in $seeds; do
  run seed --seed "$s"
done
