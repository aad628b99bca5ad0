#!/usr/bin/env bash
# Prepares what travels to the device machine beside the checkout for launch/gpu_check.py:
#   .whl/          the packages its image lacks (jraph, ml-collections, tensorboardX), for Python 3.12
#   .device_data/  phones from $COLAREC_SHARED_DATA (the ../shared beside a checkout does not travel)
# Both are listed in .git/info/exclude, so they are never committed. Then, with the device tool:
#   run(carry=[".whl", ".device_data"], timeout_s=600, command=
#     "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade
#      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit;
#      COLAREC_SHARED_DATA=$PWD/.device_data python3 launch/gpu_check.py --out $OUT --budget 540")
# Usage: launch/device_bundle.sh   (from anywhere; needs pip's registry here)
set -euo pipefail
cd "$(dirname "$0")/.."
data=${COLAREC_SHARED_DATA:-../shared/data}
[ -d "$data/phones" ] || { echo "no phones folder under $data (set COLAREC_SHARED_DATA)" >&2; exit 2; }
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
for path in /.whl/ /.device_data/; do
  grep -qxF "$path" "$exclude" 2>/dev/null || echo "$path" >> "$exclude"
done
rm -rf .whl .device_data
mkdir -p .device_data
cp -r "$data/phones" .device_data/
chmod -R u+w .device_data
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .whl \
  "jraph==0.0.6.dev0" "ml-collections==1.1.0" "tensorboardX==2.6.5"
ls -l .whl .device_data/phones
du -sh .whl .device_data
cat <<'CALL'
Device tool call: run(carry=[".whl", ".device_data"], timeout_s=600, command=
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; COLAREC_SHARED_DATA=$PWD/.device_data python3 launch/gpu_check.py --out $OUT --budget 540
CALL
