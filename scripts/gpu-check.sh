#!/usr/bin/env bash
# The GPU check without Node.js (`npm run gpu:check`, or `bash scripts/gpu-check.sh` on a machine with
# only a CUDA toolkit, cmake and Python): builds tools/gpu-check (the standalone driver over
# cuda/backend.h with the native CPU backend as oracle), runs every kernel against the CPU on
# randomized jagged layouts, times them at the benchmark shapes, runs compute-sanitizer memcheck /
# racecheck / synccheck on small cases, runs scripts/gpu_check_torch.py (PyTorch SDPA / FlexAttention
# on the same shapes, bf16 matmul and copy ceilings) and writes one JSON:
# bench/results/gpu-<gpu>-<date>.json (also copied to --out DIR).
#
# Modes: on a machine where `nvidia-smi -L` lists a GPU, the nvcc build for sm_90 (--arch to change);
# elsewhere the same driver built with g++ against the CUDA emulator (cuda/emu) at small sizes, so CI
# keeps the harness working. --emulated / --cuda force a mode; --build-only compiles and stops.
# Exit status: 0 every check passed, 1 a check or a sanitizer failed, 2 no usable GPU or a build error.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
START=$(date +%s)

MODE=auto SIZE= OUT_DIR= BUILD_ONLY=0 ARCH=90 SANITIZE=1 TORCH=1 BENCH=1 JOBS=$(nproc 2>/dev/null || echo 2)
usage() {
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
  echo "options: --emulated | --cuda   --size small|medium|large   --arch 90   --out DIR   --build-only"
  echo "         --no-sanitizer   --no-torch   --no-bench   --jobs N"
}
while [ $# -gt 0 ]; do
  case "$1" in
    --emulated) MODE=emulated ;;
    --cuda) MODE=cuda ;;
    --size) SIZE=$2; shift ;;
    --arch) ARCH=$2; shift ;;
    --out) OUT_DIR=$2; shift ;;
    --build-only) BUILD_ONLY=1 ;;
    --no-sanitizer) SANITIZE=0 ;;
    --no-torch) TORCH=0 ;;
    --no-bench) BENCH=0 ;;
    --jobs) JOBS=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu-check: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

if [ "$MODE" = auto ]; then
  if command -v nvcc >/dev/null 2>&1 && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then MODE=cuda
  else MODE=emulated; echo "gpu-check: no GPU here (nvidia-smi lists none): the driver on the CUDA emulator, small cases"; fi
fi
# GPU: large random cases (the CPU oracle has the cores); emulator: medium (about 30 s on 2 cores).
if [ -z "$SIZE" ]; then if [ "$MODE" = cuda ]; then SIZE=large; else SIZE=medium; fi; fi

GEN=()
command -v ninja >/dev/null 2>&1 && GEN=(-G Ninja)
if [ "$MODE" = cuda ]; then
  BUILD=build-gpu-check
  CONFIG=(-DLK_CHECK_ARCH="$ARCH")
  NVCC=$(command -v nvcc || true)
  [ -n "$NVCC" ] && CONFIG+=(-DCMAKE_CUDA_COMPILER="$NVCC")
else
  BUILD=build-gpu-check-emu
  CONFIG=(-DLK_CHECK_EMULATE=ON)
fi

echo "== gpu-check: build ($MODE) in $BUILD"
T0=$(date +%s)
if ! cmake -S tools/gpu-check -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release "${CONFIG[@]}" >"$BUILD.configure.log" 2>&1; then
  cat "$BUILD.configure.log" >&2; echo "gpu-check: cmake configure failed" >&2; exit 2
fi
if ! cmake --build "$BUILD" -j "$JOBS"; then echo "gpu-check: build failed" >&2; exit 2; fi
rm -f "$BUILD.configure.log"
BUILD_S=$(( $(date +%s) - T0 ))
DRIVER="$ROOT/$BUILD/lk_gpu_check"
[ "$BUILD_ONLY" = 1 ] && { echo "gpu-check: built $DRIVER in ${BUILD_S}s"; exit 0; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
ARGS=(--size "$SIZE" --json "$TMP/driver.json")
[ "$BENCH" = 1 ] || ARGS+=(--no-bench)
[ "$MODE" = emulated ] && ARGS+=(--quiet)
echo "== gpu-check: $DRIVER ${ARGS[*]}"
T0=$(date +%s)
"$DRIVER" "${ARGS[@]}" 2>&1 | tee "$TMP/driver.log"
DRIVER_RC=${PIPESTATUS[0]}
DRIVER_S=$(( $(date +%s) - T0 ))

# compute-sanitizer on small cases (GPU only; the emulator's own race detection runs in its selftest
# and under the ThreadSanitizer build of this driver).
SAN_S=0
printf '{' >"$TMP/sanitizer.json"
if [ "$MODE" = cuda ] && [ "$SANITIZE" = 1 ] && [ "$DRIVER_RC" != 2 ]; then
  if command -v compute-sanitizer >/dev/null 2>&1; then
    T0=$(date +%s)
    sep=
    left_tools=3
    for tool in memcheck racecheck synccheck; do
      extra=()
      [ "$tool" = memcheck ] && extra=(--leak-check full)
      # The three share what is left of the first 300 s of the whole run (at most 150 s each), so the
      # check ends within 8 minutes whatever a tool's slowdown is.
      limit=$(( (START + 300 - $(date +%s)) / left_tools ))
      left_tools=$(( left_tools - 1 ))
      [ "$limit" -gt 150 ] && limit=150
      [ "$limit" -lt 30 ] && limit=30
      echo "== gpu-check: compute-sanitizer --tool $tool $DRIVER --small --no-bench --no-faults --quiet (limit ${limit}s)"
      t1=$(date +%s)
      timeout "$limit" compute-sanitizer --tool "$tool" "${extra[@]}" --error-exitcode 99 "$DRIVER" --small --no-bench --no-faults --quiet \
        >"$TMP/san-$tool.log" 2>&1
      rc=$?
      secs=$(( $(date +%s) - t1 ))
      errors=$(grep -Eo 'ERROR SUMMARY: [0-9]+' "$TMP/san-$tool.log" | tail -1 | grep -Eo '[0-9]+$' || true)
      tail -4 "$TMP/san-$tool.log"
      python3 - "$tool" "$rc" "${errors:-null}" "$secs" "$TMP/san-$tool.log" >"$TMP/san-$tool.json" <<'PY' || echo "{\"tool\": \"$tool\", \"exitCode\": $rc}" >"$TMP/san-$tool.json"
import json, sys
tool, rc, errors, secs, log = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
lines = open(log, errors='replace').read().splitlines()
# A tool stopped by its time limit is inconclusive (ok: null), not a failure.
print(json.dumps({'tool': tool, 'exitCode': rc, 'ok': None if rc == 124 else rc == 0, 'timedOut': rc == 124, 'errors': None if errors == 'null' else int(errors),
                  'seconds': secs, 'logTail': lines[-40:]}))
PY
      printf '%s"%s": %s' "$sep" "$tool" "$(cat "$TMP/san-$tool.json")" >>"$TMP/sanitizer.json"
      sep=', '
    done
    SAN_S=$(( $(date +%s) - T0 ))
  else
    printf '"skipped": "compute-sanitizer not found"' >>"$TMP/sanitizer.json"
  fi
else
  printf '"skipped": "%s"' "$([ "$MODE" = cuda ] && echo 'disabled or no GPU' || echo 'emulated run: compute-sanitizer needs a GPU')" >>"$TMP/sanitizer.json"
fi
printf '}\n' >>"$TMP/sanitizer.json"

# Name of the report: the GPU's name and the date.
GPU=$(python3 -c "import json,re,sys; d=json.load(open(sys.argv[1])); n=d.get('gpu',{}).get('name') or d.get('mode','unknown'); print(re.sub(r'[^a-z0-9]+','-',n.lower()).strip('-') or 'unknown')" "$TMP/driver.json" 2>/dev/null || echo unknown)
[ "$MODE" = emulated ] && GPU=emulator
STAMP=$(date -u +%Y-%m-%dT%H-%M-%SZ)
mkdir -p bench/results
REPORT="bench/results/gpu-$GPU-$STAMP.json"

ELAPSED=$(( $(date +%s) - START ))
TORCH_BUDGET=$(( 430 - ELAPSED ))
[ "$TORCH_BUDGET" -lt 60 ] && TORCH_BUDGET=60
TORCH_ARGS=(--driver-json "$TMP/driver.json" --sanitizer-json "$TMP/sanitizer.json" --out "$REPORT" --budget-s "$TORCH_BUDGET"
            --phases "build=$BUILD_S,driver=$DRIVER_S,sanitizer=$SAN_S")
[ "$TORCH" = 1 ] && [ "$MODE" = cuda ] && [ "$DRIVER_RC" != 2 ] || TORCH_ARGS+=(--no-torch)
echo "== gpu-check: python3 scripts/gpu_check_torch.py (PyTorch side by side, ceilings, merge)"
if command -v python3 >/dev/null 2>&1; then
  PYTHONUNBUFFERED=1 python3 scripts/gpu_check_torch.py "${TORCH_ARGS[@]}" || { echo "gpu-check: torch script failed; report = driver JSON" >&2; cp "$TMP/driver.json" "$REPORT"; }
else
  echo "gpu-check: no python3; report = driver JSON" >&2
  cp "$TMP/driver.json" "$REPORT"
fi
if [ -n "$OUT_DIR" ]; then mkdir -p "$OUT_DIR" && cp "$REPORT" "$OUT_DIR/" && cp "$TMP/driver.log" "$OUT_DIR/gpu-check-driver.log"; fi

SAN_FAIL=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sum(1 for v in d.values() if isinstance(v, dict) and v.get('ok') is False))" "$TMP/sanitizer.json" 2>/dev/null || echo 0)
echo "gpu-check: wrote $REPORT ($MODE, driver exit $DRIVER_RC, sanitizer failures $SAN_FAIL, $(( $(date +%s) - START )) s)"
[ "$DRIVER_RC" = 0 ] && [ "$SAN_FAIL" = 0 ] && exit 0
[ "$DRIVER_RC" = 2 ] && exit 2
exit 1
