#!/usr/bin/env bash
# A short check on a machine with a GPU: the device-sensitive tests (model, cached decoding, beam
# search, the sharded train step, the training loop), then a bounded training of configs/phones.py
# at t5-small size in bf16 (LightGCN, GIDs, N steps of ColaRec, validation and test by beam
# search). Writes OUT_DIR/gpu_check.json (examples/s, step time, peak device memory, validation
# and test metrics, test results) and the run's workdir under OUT_DIR.
# Usage: launch/gpu_check.sh OUT_DIR [STEPS] [TIME_LIMIT_SECONDS]
# Needs the shared data ($COLAREC_SHARED_DATA, default ../shared/data) and the `gpu` extra.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 OUT_DIR [STEPS] [TIME_LIMIT_SECONDS]" >&2
  exit 2
fi
out=$(mkdir -p "$1" && cd "$1" && pwd)
steps=${2:-200}
limit=${3:-420}
cd "$(dirname "$0")/.."
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export COLAREC_SHARED_DATA=${COLAREC_SHARED_DATA:-$(cd ../shared/data && pwd)}
python -c 'import jax; assert jax.default_backend() == "gpu", jax.devices(); print(jax.devices())'

set +e
# The 4-device sharding tests need 4 devices; on one GPU they are left out.
timeout 300 python -m pytest -q -p no:cacheprovider -k "not four_devices" tests/test_model.py \
  tests/test_decode.py tests/test_train_step.py tests/test_train_loop.py \
  > "$out/tests.log" 2>&1
tests_rc=$?
timeout "$limit" python -m colarec_jax.main --config=configs/phones.py \
  --workdir="$out/phones" --mode=train --config.model.dtype=bfloat16 \
  --config.train.epochs=1 --config.train.steps_per_epoch="$steps" > "$out/train.log" 2>&1
train_rc=$?
set -e
python - "$out" "$tests_rc" "$train_rc" <<'PY'
import json, os, sys
out, tests_rc, train_rc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
result = {"tests_exit_code": tests_rc, "train_exit_code": train_rc,
          "tests_summary": open(os.path.join(out, "tests.log")).read().strip().splitlines()[-1:]}
metrics_path = os.path.join(out, "phones", "colarec", "metrics.json")
if os.path.isfile(metrics_path):
  metrics = json.load(open(metrics_path))
  epoch = metrics["history"][-1]
  result.update({k: epoch.get(k) for k in ("examples_per_second", "seconds_per_step", "seconds",
                                           "peak_device_mb")})
  result["valid"] = metrics["valid"]["overall"]
  result["test"] = metrics["test"]["overall"]
json.dump(result, open(os.path.join(out, "gpu_check.json"), "w"), indent=1)
print(json.dumps(result, indent=1))
PY
