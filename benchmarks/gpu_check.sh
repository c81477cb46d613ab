#!/usr/bin/env bash
# The GPU check of issue 19 (goal 4), one script for a lent CUDA machine, within about 5 minutes.
#
#   bash benchmarks/gpu_check.sh            # from the repository root; PYTHON=... to pick the interpreter
#
# 1. finds a Python whose JAX sees a GPU (installs jax[cuda12] with pip if the given one does not and the
#    machine can reach PyPI; the workplace's GPU machines have a CUDA JAX and no network);
# 2. puts this tree's lljax on the path (the native CPU kernel is built when the machine can; the GPU runs
#    the pure-JAX path either way, and the tests' native cases run only where the kernel was built);
# 3. runs the solver contract and the exploration tests on the GPU (float64, as the suite does);
# 4. times the pure-JAX solver against plain vmapped Newton loops (bench_jax_path.py) and the headline
#    case at 1M entities in float32 and float64 (bench_suite.py: solve_block and update, against the
#    floor that bench_suite measures on the device: its matrix-multiply rate and memory bandwidth).
# Tables go to stdout; JSON and logs to $OUT (default benchmarks/results/gpu). A dry run on a CPU machine
# (to check the script itself): ALLOW_CPU=1 ENTITIES=20000 bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
ENTITIES=${ENTITIES:-1000000}
status=0

has_gpu() { "$1" -c 'import jax, sys; sys.exit(0 if jax.default_backend() == "gpu" else 1)' 2>/dev/null; }
if [ "${ALLOW_CPU:-0}" != 1 ] && ! has_gpu "$PY"; then
  echo "== $PY has no GPU JAX: trying pip install jax[cuda12]"
  "$PY" -m pip install -q "jax[cuda12]" >"$OUT/pip.log" 2>&1 || true
  has_gpu "$PY" || { echo "no JAX with a GPU backend here (see $OUT/pip.log)"; exit 2; }
fi
"$PY" -c 'import jax; print("jax", jax.__version__, jax.devices())'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

echo "== lljax from $(pwd)"
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/build.log" 2>&1 || echo "(not installed: $OUT/build.log)"
native=$("$PY" -c 'from lljax.solve import kernels; print(int(kernels.available()))' 2>/dev/null || echo 0)
echo "native CPU kernel built: $native"
select=()
[ "$native" = 1 ] || select=(-k "not native")

echo "== tests on the GPU: solver contract, exploration"
timeout 240 "$PY" -m pytest -q -p no:cacheprovider tests/test_solve_contract.py tests/test_explore.py \
  tests/test_explore_inputs.py tests/test_arms.py "${select[@]}" 2>&1 | tee "$OUT/tests.log" | tail -5
[ "${PIPESTATUS[0]}" = 0 ] || status=1

echo "== pure-JAX solver vs plain vmapped Newton ($ENTITIES entities, float32 and float64)"
for dtype in float32 float64; do
  timeout 120 "$PY" benchmarks/bench_jax_path.py --entities "$ENTITIES" --dtype "$dtype" --repeats 3 \
    --out "$OUT/bench_jax_path_$dtype.json" 2>&1 | tail -6 || status=1
done

echo "== headline at $ENTITIES entities against the device floor"
timeout 240 "$PY" benchmarks/bench_suite.py --only headline --entities "$ENTITIES" --dtypes float32 float64 \
  --methods update --repeats 3 --budget 20 --out "$OUT/bench_suite_gpu.json" --plot "$OUT/bench_suite_gpu.png" \
  2>&1 | tee "$OUT/bench_suite.log" | tail -25 || status=1
exit $status
