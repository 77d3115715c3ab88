#!/usr/bin/env bash
# Ristretto's SqueezeNet demo, step 2: score the quantized net with the fine-tuned weights
# (Ristretto's published examples/squeezenet/squeezenet_finetuned.caffemodel, or WEIGHTS=your
# snapshot of step 1) on the validation set. ITERATIONS: batches of 25 (default 2000).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Paths are relative to the root folder, as in Ristretto (whose scripts run from Caffe's root):
# the repository by default, or ROOT=/path for a copy laid out the same way.
cd "${ROOT:-$here/../..}"
# The tool: RISTRETTO=/path/to/ristretto, else the repository's .venv, else `ristretto` on PATH.
RISTRETTO="${RISTRETTO:-$here/../../.venv/bin/ristretto}"
if [ ! -x "$RISTRETTO" ]; then
	RISTRETTO="$(command -v ristretto)" || { echo "$0: ristretto not found; do the README's set-up" >&2; exit 1; }
fi
need() { [ -e "$1" ] || { echo "$0: $(pwd)/$1 is missing: $2 (see examples/squeezenet/README.md)" >&2; exit 1; }; }
ITERATIONS="${ITERATIONS:-2000}"
WEIGHTS="${WEIGHTS:-examples/squeezenet/squeezenet_finetuned.caffemodel}"
need examples/squeezenet/quantized.prototxt "the quantized net: run 00_quantize_squeezenet.sh first"
need "$WEIGHTS" "the fine-tuned weights (or set WEIGHTS=examples/squeezenet/squeezenet_iter_2000.caffemodel)"
need examples/imagenet/ilsvrc12_val_lmdb "the ImageNet validation LMDB"

set -x
"$RISTRETTO" test \
	--model=examples/squeezenet/quantized.prototxt \
	--weights="$WEIGHTS" \
	--iterations="$ITERATIONS" "$@"
