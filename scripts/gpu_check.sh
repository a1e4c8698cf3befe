#!/usr/bin/env bash
# One-command check of the CUDA backend on a machine with an NVIDIA GPU.
#
#   bash scripts/gpu_check.sh            # from anywhere; runs in the repository root
#   PYTHON=/path/to/python bash scripts/gpu_check.sh
#
# Needs: an NVIDIA driver + GPU, a CUDA build of PyTorch, the CUDA toolkit
# (nvcc; CUDA_HOME defaults to /usr/local/cuda) and ninja. pytest is optional:
# when `python -m pytest` is missing, pure-Python wheels carried in ./.whl/
# (pytest, pluggy, iniconfig, packaging; ninja too if needed) are installed
# offline; without them the tests are skipped with a clear message and the
# benchmark still runs.
#
# Steps (total budget about 7.5 minutes, each step has its own time limit):
#   1. nvidia-smi, torch / CUDA versions
#   2. build the CUDA extension (src/kernels/build.py: build.extension("cuda"))
#   3. python -m pytest -m cuda tests/kernels -q
#   4. compute-sanitizer --tool racecheck on a small case of every kernel (shared-memory hazards)
#   5. python benchmarks/attention.py --device cuda --lengths 1024 ... 65536 --head-dim 64
# Everything is tee'd to benchmarks/results/gpu_check_<gpu-name>_<date>.log;
# the benchmark writes benchmarks/results/gpu_<gpu-name>_<date>.{csv,md,png}.
# Exit status: 0 when every step that ran passed, 1 otherwise.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
PYTHON="${PYTHON:-python}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
if [ -x "$CUDA_HOME/bin/nvcc" ]; then
  export PATH="$CUDA_HOME/bin:$PATH"
fi
START=$SECONDS
BUDGET_S="${GPU_CHECK_BUDGET_S:-450}"  # leaves margin below 8 minutes

remaining() {  # seconds left in the budget, at least 10
  local left=$((BUDGET_S - (SECONDS - START)))
  if [ "$left" -lt 10 ]; then left=10; fi
  echo "$left"
}

gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)"
gpu_name="$(printf '%s' "${gpu_name:-unknown-gpu}" | tr -c 'A-Za-z0-9._-' '-' | sed 's/-\{2,\}/-/g; s/^-//; s/-$//')"
stamp="$(date +%Y%m%d-%H%M%S)"
mkdir -p benchmarks/results
LOG="benchmarks/results/gpu_check_${gpu_name}_${stamp}.log"
exec > >(tee -a "$LOG") 2>&1

status=0
step() { printf '\n===== %s (t=%ds) =====\n' "$1" "$((SECONDS - START))"; }

step "1/5 machine"
date -u
nvidia-smi || { echo "nvidia-smi failed: no NVIDIA driver/GPU?"; status=1; }
"$PYTHON" - <<'EOF' || status=1
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__,
      "| torch CUDA", torch.version.cuda, "| cuDNN", torch.backends.cudnn.version())
print("cuda available:", torch.cuda.is_available(), "| devices:", torch.cuda.device_count())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device 0: {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.1f} GiB, "
          f"{p.multi_processor_count} SMs")
EOF
command -v nvcc >/dev/null && nvcc --version | tail -n 2 || echo "nvcc not found (CUDA_HOME=$CUDA_HOME)"

# Offline installs of carried wheels (./.whl) for what may be missing.
install_carried() {  # $@: package names
  if compgen -G ".whl/*.whl" >/dev/null; then
    echo "installing $* from ./.whl (offline)"
    "$PYTHON" -m pip install --quiet --no-index --find-links .whl "$@" || return 1
  else
    return 1
  fi
}
if ! "$PYTHON" -c "import ninja" 2>/dev/null && ! command -v ninja >/dev/null; then
  install_carried ninja || echo "WARNING: ninja is missing; torch's extension builder needs it"
fi

step "2/5 build the CUDA extension"
timeout "$(($(remaining) < 300 ? $(remaining) : 300))" "$PYTHON" - <<'EOF' || { echo "BUILD FAILED"; status=1; }
import time
t = time.perf_counter()
from src.kernels import build
module = build.extension("cuda", verbose=True)
print(f"built/loaded {module.__file__} in {time.perf_counter() - t:.1f} s")
EOF

step "3/5 CUDA tests"
if ! "$PYTHON" -m pytest --version >/dev/null 2>&1; then
  install_carried pytest || true
fi
if "$PYTHON" -m pytest --version >/dev/null 2>&1; then
  timeout "$(($(remaining) < 240 ? $(remaining) : 240))" \
    "$PYTHON" -m pytest -m cuda tests/kernels -q -rs -p no:cacheprovider || { echo "CUDA TESTS FAILED"; status=1; }
else
  echo "SKIPPED: 'python -m pytest' is unavailable here. Carry pure-Python wheels of"
  echo "pytest, pluggy, iniconfig and packaging in ./.whl/ to run the tests; continuing."
  status=1
fi

step "4/5 racecheck (small case)"
SANITIZER="$(command -v compute-sanitizer || echo "$CUDA_HOME/bin/compute-sanitizer")"
if [ -x "$SANITIZER" ]; then
  timeout "$(($(remaining) < 120 ? $(remaining) : 120))" "$SANITIZER" --tool racecheck --error-exitcode 1 \
    "$PYTHON" - <<'EOF' || { echo "RACECHECK FAILED"; status=1; }
import torch
from src.kernels import build, ops
build.extension("cuda")
g = torch.Generator(device="cuda").manual_seed(0)
bh, nq, nk, d, dv, m, tau = 2, 70, 50, 32, 16, 3, 3
qm = torch.rand(bh, nq, device="cuda", generator=g) > 0.2
km = torch.rand(bh, nk, device="cuda", generator=g) > 0.2
qc = torch.randint(0, 2**tau, (bh, nq, m), device="cuda", generator=g, dtype=torch.int32)
kc = torch.randint(0, 2**tau, (bh, nk, m), device="cuda", generator=g, dtype=torch.int32)
q, k = torch.randn(bh, nq, d, device="cuda"), torch.randn(bh, nk, d, device="cuda")
v, gr = torch.randn(bh, nk, dv, device="cuda"), torch.randn(bh, nq, dv, device="cuda")
x = torch.nn.functional.normalize(torch.randn(bh, 33, 32, device="cuda"), dim=-1)
ops.hash_gaussian(x, torch.randn(bh, 32, m * tau, device="cuda"), tau)
ops.hash_fast(x, torch.ones(bh, 3, 1, 32, device="cuda"), m, tau)
ops.lsh_cumulation(qm, qc, km, kc, v, tau)
ops.lsh_backward(qm, qc, q, km, kc, k, v, gr, tau)
torch.cuda.synchronize()
print("racecheck case ran")
EOF
else
  echo "compute-sanitizer not found: racecheck skipped"
fi

step "5/5 benchmark"
bench_args=(--device cuda --lengths 1024 2048 4096 8192 16384 32768 65536 --head-dim 64
            --out "benchmarks/results/gpu_${gpu_name}_${stamp}")
if "$PYTHON" benchmarks/attention.py --help 2>/dev/null | grep -q -- "--timeout"; then
  bench_args+=(--timeout 90)  # per point, so that one slow point cannot use the whole budget
fi
timeout "$(remaining)" "$PYTHON" benchmarks/attention.py "${bench_args[@]}" \
  || { echo "BENCHMARK FAILED or ran out of time"; status=1; }

step "done: status $status, log $LOG"
exit "$status"
