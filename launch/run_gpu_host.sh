#!/usr/bin/env bash
# Run colarec-jax on all GPUs of one host: one process, the data axis over every local GPU.
# Use it on a single multi-GPU machine (for several hosts see run_slurm.sbatch). Needs the `gpu`
# extra: pip install -e '.[gpu]'.
# Usage: launch/run_gpu_host.sh CONFIG WORKDIR [--mode=...] [--config.key=value ...]
# Example: launch/run_gpu_host.sh configs/phones.py runs/phones --config.model.dtype=bfloat16
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 CONFIG WORKDIR [flags...]" >&2; exit 2; }
# Let XLA take GPU memory as needed instead of pre-allocating 75% of each device.
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader 2>/dev/null || true
# Every device on the data axis, unless a later --config.num_devices says otherwise.
exec "$(dirname "$0")/run_local.sh" "$1" "$2" --config.num_devices=0 "${@:3}"
