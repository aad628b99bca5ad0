#!/usr/bin/env bash
# Run colarec-jax on a Cloud TPU VM pod slice: the same command on every worker through
# `gcloud compute tpus tpu-vm ssh --worker=all`; jax.distributed.initialize() finds the other
# workers itself, and the data axis spans every TPU core of the slice. Run setup_tpu_vm.sh first.
# WORKDIR must be a path every worker shares (e.g. a Filestore or gcsfuse mount): checkpoints are
# written by all workers, data/LightGCN/GIDs by worker 0 and then reused.
# Usage: launch/run_tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--mode=...] [--config.key=value ...]
# Example: launch/run_tpu_pod.sh colarec-v4-32 us-central2-b configs/beauty.py /mnt/shared/beauty \
#            --config.model.dtype=bfloat16
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [flags...]" >&2
  exit 2
fi
tpu=$1
zone=$2
config=$3
workdir=$4
shift 4
flags=$(printf ' %q' --distributed --config="$config" --workdir="$workdir" \
  --config.num_devices=0 "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all \
  --command="cd ~/colarec-jax && python3 -m colarec_jax.main$flags"
