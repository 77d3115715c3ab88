#!/usr/bin/env bash
# Ristretto's SqueezeNet demo, step 2: score the quantized net with the fine-tuned weights
# (Ristretto's published examples/squeezenet/squeezenet_finetuned.caffemodel, or WEIGHTS=your
# snapshot of step 1) on the validation set. ITERATIONS: batches of 25 (default 2000).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
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
