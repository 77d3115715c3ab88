#!/usr/bin/env bash
# Ristretto's SqueezeNet demo, step 1: fine-tune the quantized net of step 0 from the float
# weights with examples/squeezenet/solver_finetune.prototxt (Adam, 2000 iterations of 32 x 32
# images, a snapshot examples/squeezenet/squeezenet_iter_N.caffemodel every 100 iterations).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
need examples/squeezenet/quantized.prototxt "the quantized net: run 00_quantize_squeezenet.sh first"
need examples/squeezenet/squeezenet_v1.0.caffemodel "the float SqueezeNet v1.0 weights"
need examples/imagenet/ilsvrc12_train_lmdb "the ImageNet training LMDB"
need examples/imagenet/ilsvrc12_val_lmdb "the ImageNet validation LMDB"

set -x
"$RISTRETTO" train \
	--solver=examples/squeezenet/solver_finetune.prototxt \
	--weights=examples/squeezenet/squeezenet_v1.0.caffemodel "$@"
