#!/usr/bin/env bash
# Prepare every worker of a Cloud TPU VM (single host or pod slice) for colarec-jax: copy this
# checkout to ~/colarec-jax on all workers and install it with the `tpu` extra. Run it once from
# your workstation after `gcloud compute tpus tpu-vm create`, then use run_tpu_pod.sh.
# Usage: launch/setup_tpu_vm.sh TPU_NAME ZONE [PROJECT]
# Example: launch/setup_tpu_vm.sh colarec-v4-32 us-central2-b my-project
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 TPU_NAME ZONE [PROJECT]" >&2
  exit 2
fi
tpu=$1
zone=$2
project_args=()
if [ $# -ge 3 ]; then
  project_args=(--project="$3")
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
archive=$(mktemp -d)/colarec-jax.tar.gz
trap 'rm -f "$archive"' EXIT
git -C "$repo" archive --format=tar.gz --prefix=colarec-jax/ -o "$archive" HEAD
gcloud compute tpus tpu-vm scp "$archive" "$tpu":colarec-jax.tar.gz --zone="$zone" \
  "${project_args[@]}" --worker=all
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" "${project_args[@]}" --worker=all \
  --command="rm -rf ~/colarec-jax && tar xzf colarec-jax.tar.gz && cd colarec-jax && \
python3 -m pip install -q -e '.[tpu]' && python3 -c 'import jax; print(jax.device_count())'"
