#!/usr/bin/env bash
# Check the CUDA backend in one bounded command (at most 9 minutes), for a short GPU visit.
#
#   bash scripts/gpu_check.sh                 # every step; results in ${OUT:-benchmarks/results/gpu}
#   bash scripts/gpu_check.sh --dry-run       # print the plan (steps, caps, output folder), run nothing
#   bash scripts/gpu_check.sh --step locks    # one step alone (repeatable)
#   bash scripts/gpu_check.sh --device cpu    # the timing and profile steps on tiny CPU sizes (testing)
#
# Every step runs under `timeout` with its own cap; the caps sum to at most 540 s, and
# a step never runs past 540 s from the start. Results go to one folder, $OUT when set
# (a device tool's collection folder) else benchmarks/results/gpu, at most 5 files:
# gpu_check.log, timing.csv, timing.md, timing.png, profile.md. The timing rows are
# written as they are measured, so a step cut short by its cap keeps what it measured.
# Python: $PYTHON, else python3, else python. CUDA_HOME is left to torch to find
# (CUDA_HOME, then nvcc on PATH, then /usr/local/cuda) unless the caller sets it.
# Exit status: 0 when no step failed (skipped steps do not count), 1 otherwise, 2 on bad arguments.
set -uo pipefail

CALLER_PWD="$PWD"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOTAL_LIMIT_S=540
KILL_GRACE_S=5
STEPS=(env locks build tests memcheck racecheck timing profile train)
declare -A CAP=([env]=15 [locks]=5 [build]=150 [tests]=75 [memcheck]=35 [racecheck]=45
                [timing]=120 [profile]=25 [train]=50)
declare -A WHAT=(
  [env]="environment facts: GPU, driver, torch, CUDA, nvcc, ninja, compute-sanitizer"
  [locks]="remove stale torch build 'lock' files under the YOSO build root"
  [build]="build the CUDA extension (timed)"
  [tests]="pytest -m cuda -x tests/kernels"
  [memcheck]="compute-sanitizer --tool memcheck on a small case of every op"
  [racecheck]="compute-sanitizer --tool racecheck on the same small case"
  [timing]="in-process timing: YOSO-16/32, YOSO-C-16, SDPA fp32/bf16; B=32 H=2 and B=1 H=16; n=1K..64K"
  [profile]="per-kernel profile (hash / forward cumulation / backward) at BH=16 n=16K"
  [train]="ListOps quickstart smoke run on the GPU, 50 steps (summary line kept)"
)

usage() {
  sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

die_usage() {  # a clear message on bad arguments, exit 2
  echo "gpu_check.sh: error: $*" >&2
  echo "usage: bash scripts/gpu_check.sh [--dry-run] [--device cuda|cpu] [--step NAME]..." >&2
  echo "steps: ${STEPS[*]}" >&2
  exit 2
}

is_step() {
  local s
  for s in "${STEPS[@]}"; do [ "$s" = "$1" ] && return 0; done
  return 1
}

DRY_RUN=0
DEVICE=cuda
SELECTED=()
parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --dry-run) DRY_RUN=1 ;;
      --device)
        [ $# -ge 2 ] || die_usage "--device needs a value (cuda or cpu)"
        case "$2" in cuda|cpu) DEVICE="$2" ;; *) die_usage "--device must be cuda or cpu, got '$2'" ;; esac
        shift ;;
      --step)
        [ $# -ge 2 ] || die_usage "--step needs a step name"
        is_step "$2" || die_usage "unknown step '$2'"
        SELECTED+=("$2")
        shift ;;
      -h|--help) usage; exit 0 ;;
      *) die_usage "unknown argument '$1'" ;;
    esac
    shift
  done
  if [ ${#SELECTED[@]} -eq 0 ]; then SELECTED=("${STEPS[@]}"); fi
}

pick_python() {  # $PYTHON, else python3, else python: many GPU images have only python3
  if [ -n "${PYTHON:-}" ]; then
    command -v "$PYTHON" >/dev/null || die_usage "PYTHON=$PYTHON is not a command"
    echo "$PYTHON"
  elif command -v python3 >/dev/null; then
    echo python3
  elif command -v python >/dev/null; then
    echo python
  else
    die_usage "no python3 or python on PATH (set PYTHON)"
  fi
}

out_dir() {  # $OUT (relative to the caller's folder) or the repository's benchmarks/results/gpu
  if [ -z "${OUT:-}" ]; then
    echo "$ROOT/benchmarks/results/gpu"
  elif [[ "$OUT" = /* ]]; then
    echo "$OUT"
  else
    echo "$CALLER_PWD/$OUT"
  fi
}

print_plan() {
  local s i=0 total=0
  echo "gpu_check plan (device $DEVICE)"
  echo "python: $PY ($(command -v "$PY"))"
  echo "output folder: $OUT_DIR"
  for s in "${SELECTED[@]}"; do
    i=$((i + 1))
    total=$((total + CAP[$s]))
    printf '  %d. %-10s cap %3d s  %s\n' "$i" "$s" "${CAP[$s]}" "${WHAT[$s]}"
  done
  echo "total: ${total} s of caps (limit ${TOTAL_LIMIT_S} s;" \
    "a step is killed ${KILL_GRACE_S} s after its cap)"
}

# ---- the steps: each runs as `bash -c step_NAME` under timeout; exit 3 means skipped ----

step_env() {
  date -u
  if command -v nvidia-smi >/dev/null; then
    timeout 10 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv \
      || echo "nvidia-smi failed"
  else
    echo "nvidia-smi: not found"
  fi
  echo "CUDA_HOME: ${CUDA_HOME:-unset (torch looks for it)}"
  local nvcc
  nvcc="$(command -v nvcc || echo "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc")"
  if [ -x "$nvcc" ]; then "$nvcc" --version | tail -n 1; else echo "nvcc: not found"; fi
  if command -v ninja >/dev/null; then echo "ninja $(ninja --version)"; else echo "ninja: not on PATH"; fi
  echo "compute-sanitizer: $(sanitizer || echo 'not found')"
  "$PY" - <<'EOF'
import platform

import torch
from torch.utils import cpp_extension

print("python", platform.python_version(), "| torch", torch.__version__, "| torch CUDA", torch.version.cuda,
      "| torch's CUDA_HOME", cpp_extension.CUDA_HOME)
print("cuda available:", torch.cuda.is_available(), "| devices:", torch.cuda.device_count())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device 0: {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.1f} GiB, "
          f"{p.multi_processor_count} SMs")
EOF
}

step_locks() {  # a build killed by its cap leaves torch's lock file; every later build would wait on it
  if [ ! -d "$BUILD_ROOT" ]; then
    echo "no build root yet ($BUILD_ROOT)"
    return 0
  fi
  local locks
  locks="$(find "$BUILD_ROOT" -maxdepth 3 -type f -name lock -print -delete)"
  if [ -n "$locks" ]; then
    echo "removed stale lock file(s):"
    echo "$locks"
  else
    echo "no lock files under $BUILD_ROOT"
  fi
}

step_build() {
  "$PY" - <<'EOF'
import time

t = time.perf_counter()
from src.kernels import build

module = build.extension("cuda", verbose=True)
print(f"built/loaded {module.__file__} in {time.perf_counter() - t:.1f} s")
EOF
}

install_carried() {  # $@: packages, offline from ./.whl when the image lacks them
  compgen -G ".whl/*.whl" >/dev/null || return 1
  echo "installing $* from ./.whl (offline)"
  "$PY" -m pip install --quiet --no-index --find-links .whl "$@"
}

step_tests() {
  "$PY" -m pytest --version >/dev/null 2>&1 || install_carried pytest pluggy iniconfig packaging || {
    echo "skipped: '$PY -m pytest' is unavailable (carry its wheels in ./.whl/)"
    return 3
  }
  "$PY" -m pytest -m cuda -x tests/kernels -q -rs -p no:cacheprovider
}

sanitizer() {  # path of compute-sanitizer, or fail
  local s
  s="$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")"
  [ -x "$s" ] && echo "$s"
}

run_sanitizer() {  # $1: tool; the output is cut short so that a flood of reports stays readable
  local s
  s="$(sanitizer)" || { echo "skipped: compute-sanitizer not found"; return 3; }
  "$s" --tool "$1" --error-exitcode 1 --print-limit 10 \
    "$PY" benchmarks/gpu_timing.py smallcase --device cuda 2>&1 | tail -n 40
}

step_memcheck() { run_sanitizer memcheck; }
step_racecheck() { run_sanitizer racecheck; }

step_timing() {  # $1: the step's cap; the sweep stops starting points before it
  local args=(sweep --out "$OUT_DIR" --budget-s "$(($1 > 30 ? $1 - 15 : $1 / 2 + 1))")
  if [ "$DEVICE" = cpu ]; then
    args+=(--device cpu --lengths 64 128 --shapes 2x2 1x4 --head-dim 16 --warmup 1 --repeats 2)
  else
    args+=(--device cuda)
    if [ "$BUILD_OK" != 1 ]; then
      echo "the CUDA build failed: timing SDPA only"
      args+=(--attentions softmax softmax-bf16)
    fi
  fi
  "$PY" benchmarks/gpu_timing.py "${args[@]}"
}

step_profile() {
  if [ "$DEVICE" = cpu ]; then
    "$PY" benchmarks/gpu_timing.py profile --device cpu --out "$OUT_DIR" --batch-heads 2 --length 512 \
      --head-dim 16 --warmup 1 --repeats 2
  else
    "$PY" benchmarks/gpu_timing.py profile --device cuda --out "$OUT_DIR"
  fi
}

step_train() {  # full output in a temporary folder; only the summary lines reach the log
  local tmp rc
  tmp="$(mktemp -d)"
  "$PY" train.py --config configs/quickstart.yaml --config configs/trainer/gpu.yaml \
    --trainer.max_steps 50 --trainer.default_root_dir "$tmp" >"$tmp/train.log" 2>&1
  rc=$?
  if [ "$rc" -eq 0 ]; then
    grep -E '^Test \(' "$tmp/train.log" || tail -n 3 "$tmp/train.log"
  else
    tail -n 15 "$tmp/train.log"
  fi
  rm -rf "$tmp"
  return "$rc"
}

# ---- running them ----

declare -A STATUS=()
START=$SECONDS
BUILD_OK=0

skip_reason() {  # why step $1 is not run here, or nothing
  case "$1" in
    build|tests|memcheck|racecheck|train)
      if [ "$DEVICE" = cpu ]; then echo "needs a GPU (--device cpu)"; return; fi ;;
  esac
  case "$1" in
    tests|memcheck|racecheck|profile)
      if [ "$DEVICE" = cuda ] && [ "$BUILD_OK" != 1 ] && is_selected build; then
        echo "the CUDA build failed"
      fi ;;
  esac
}

is_selected() {
  local s
  for s in "${SELECTED[@]}"; do [ "$s" = "$1" ] && return 0; done
  return 1
}

step_cap() {  # the step's cap, cut to what is left of the total limit
  local left=$((TOTAL_LIMIT_S - KILL_GRACE_S - (SECONDS - START)))
  if [ "$left" -lt "${CAP[$1]}" ]; then echo "$left"; else echo "${CAP[$1]}"; fi
}

run_step() {  # $1: step name; records ok / skipped / timeout / FAILED
  local name="$1" cap reason rc
  printf '\n===== %s (cap %s s, t=%d s) =====\n' "$name" "${CAP[$name]}" "$((SECONDS - START))"
  reason="$(skip_reason "$name")"
  if [ -n "$reason" ]; then
    echo "skipped: $reason"
    STATUS[$name]=skipped
    return
  fi
  cap="$(step_cap "$name")"
  if [ "$cap" -lt 3 ]; then
    echo "skipped: no time left in the ${TOTAL_LIMIT_S} s limit"
    STATUS[$name]=skipped
    return
  fi
  local t0=$SECONDS
  timeout -k "$KILL_GRACE_S" "$cap" bash -c "set -o pipefail; step_$name $cap"
  rc=$?
  case "$rc" in
    0) STATUS[$name]=ok ;;
    3) STATUS[$name]=skipped ;;
    124|137) STATUS[$name]=timeout; echo "TIMEOUT: $name passed its cap of $cap s" ;;
    *) STATUS[$name]="FAILED($rc)"; echo "FAILED: $name exited with $rc" ;;
  esac
  echo "($name: $((SECONDS - t0)) s)"
  if [ "$name" = build ]; then
    if [ "$rc" -eq 0 ]; then BUILD_OK=1; else step_locks; fi  # a killed build must not block later ones
  fi
}

summary() {
  local s line="SUMMARY" failed=0
  for s in "${SELECTED[@]}"; do
    line+=" $s=${STATUS[$s]:-not-run}"
    case "${STATUS[$s]:-}" in ok|skipped) ;; *) failed=1 ;; esac
  done
  printf '\n%s | %d s | results in %s\n' "$line" "$((SECONDS - START))" "$OUT_DIR"
  return "$failed"
}

main() {
  parse_args "$@"
  cd "$ROOT" || exit 1
  PY="$(pick_python)" || exit 2
  OUT_DIR="$(out_dir)"
  BUILD_ROOT="${YOSO_BUILD_DIR:-$HOME/.cache/yoso_lightning/build}"
  BUILD_ROOT="${BUILD_ROOT/#\~/$HOME}"
  if [ "$DRY_RUN" = 1 ]; then
    print_plan
    exit 0
  fi
  if [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then export PATH="$CUDA_HOME/bin:$PATH"; fi
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  export PY OUT_DIR BUILD_ROOT DEVICE ROOT
  export -f "${STEPS[@]/#/step_}" install_carried sanitizer run_sanitizer
  mkdir -p "$OUT_DIR" || exit 1
  exec > >(tee -a "$OUT_DIR/gpu_check.log") 2>&1
  print_plan
  local s
  for s in "${SELECTED[@]}"; do
    export BUILD_OK
    run_step "$s"
  done
  summary
}

main "$@"
