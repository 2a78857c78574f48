#!/usr/bin/env bash
# One prepared GPU check: the CUDA tests (tests/gpu) and the GPU benchmark (bench_gpu.py) on one NVIDIA GPU,
# ending with bench_gpu's table (load from disk and from RAM vs the raw read and the host->device bound,
# served vs in-process it/s for SD1.5 and SDXL, peak memory of the largest request vs the estimate, the
# registry's ledger vs the driver). Under 8 minutes on one H100-class GPU.
#
#   bash benchmarks/gpu_check.sh [--work DIR]      # on a GPU machine, in the project's venv
#   bash benchmarks/gpu_check.sh --allow-cpu       # the same flow on a CPU (smoke test; full-size checkpoints:
#                                                  # ~9 GB of disk and ~8 GB of RAM, small sizes and steps)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
cpu=0
work=""
while [ $# -gt 0 ]; do
  case "$1" in
    --allow-cpu) cpu=1 ;;
    --work) work="$2"; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
python=${PYTHON:-python}
if ! "$python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  [ "$cpu" = 1 ] || { echo "no CUDA device: run on a GPU machine, or pass --allow-cpu for a CPU smoke test" >&2; exit 1; }
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== tests/gpu"
"$python" -m pytest -q tests/gpu -p no:cacheprovider
echo "== bench_gpu.py"
args=(--format single)
[ -n "$work" ] && args+=(--work "$work")
if [ "$cpu" = 1 ]; then
  args+=(--allow-cpu --size 64 --steps 1 --requests 1 --max-images 1 --switches 1 --h2d-mib 64)
fi
"$python" benchmarks/bench_gpu.py "${args[@]}"
