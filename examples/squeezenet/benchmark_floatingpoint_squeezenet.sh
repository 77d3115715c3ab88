#!/usr/bin/env bash
# Ristretto's SqueezeNet demo: score the 32-bit float SqueezeNet v1.0 on the validation set,
# the baseline of the quantized one. ITERATIONS: batches of 25 (default 2000).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ITERATIONS="${ITERATIONS:-2000}"
need examples/squeezenet/squeezenet_v1.0.caffemodel "the float SqueezeNet v1.0 weights"
need examples/imagenet/ilsvrc12_val_lmdb "the ImageNet validation LMDB"

set -x
"$RISTRETTO" test \
	--model=examples/squeezenet/train_val.prototxt \
	--weights=examples/squeezenet/squeezenet_v1.0.caffemodel \
	--iterations="$ITERATIONS" "$@"
