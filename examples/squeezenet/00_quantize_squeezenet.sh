#!/usr/bin/env bash
# Ristretto's SqueezeNet demo, step 0: search dynamic fixed point bit widths for SqueezeNet v1.0
# that cost at most 3 points of top-1 accuracy; writes examples/squeezenet/quantized.prototxt.
# ITERATIONS (default 2000 = the 50,000 validation images in batches of 25) sets the batches per
# scoring run.
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
need examples/squeezenet/squeezenet_v1.0.caffemodel "the float SqueezeNet v1.0 weights"
need examples/imagenet/ilsvrc12_val_lmdb "the ImageNet validation LMDB"
need examples/imagenet/ilsvrc12_train_lmdb "the ImageNet training LMDB (quantize measures ranges on the TRAIN net)"

set -x
"$RISTRETTO" quantize \
	--model=examples/squeezenet/train_val.prototxt \
	--weights=examples/squeezenet/squeezenet_v1.0.caffemodel \
	--model_quantized=examples/squeezenet/quantized.prototxt \
	--trimming_mode=dynamic_fixed_point --iterations="$ITERATIONS" \
	--error_margin=3 "$@"
