#!/usr/bin/env bash
# Ristretto's SqueezeNet demo, step 0: search dynamic fixed point bit widths for SqueezeNet v1.0
# that cost at most 3 points of top-1 accuracy; writes examples/squeezenet/quantized.prototxt.
# ITERATIONS (default 2000 = the 50,000 validation images in batches of 25) sets the batches per
# scoring run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
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
