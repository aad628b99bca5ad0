#!/usr/bin/env bash
# Run colarec-jax on this machine (CPU, or one GPU when jax sees one).
# Usage: launch/run_local.sh CONFIG WORKDIR [--mode=...] [--config.key=value ...]
# Example: launch/run_local.sh configs/default.py runs/default --mode=stats
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG WORKDIR [flags...]" >&2
  exit 2
fi
config=$1
workdir=$2
shift 2
exec python -m colarec_jax.main --config="$config" --workdir="$workdir" "$@"
