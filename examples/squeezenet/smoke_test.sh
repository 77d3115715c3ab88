#!/usr/bin/env bash
# Smoke test of the SqueezeNet scripts without ImageNet: builds a tiny ImageNet-like layout in
# out/squeezenet-smoke/ and runs the example's four scripts on it, unchanged, with ROOT pointing
# there: 00 (quantize), benchmark_floatingpoint, 01 (fine-tune, 2 iterations) and 02 (test the
# fine-tuned snapshot), each over ITERATIONS=2 test batches.
#
#   examples/imagenet/ilsvrc12_{train,val}_lmdb   the 20 ImageNet sample photos of
#                                                 ../shared/data/images/foolbox_imagenet (or
#                                                 IMAGES=folder), resized to 256x256 by
#                                                 convert_imageset, label = the file name's last
#                                                 number (imagenet_03_990.jpg -> 990)
#   examples/squeezenet/train_val.prototxt        the example's net with smaller batches (TRAIN 4,
#                                                 TEST 10) so that the run stays short
#   examples/squeezenet/solver_finetune.prototxt  the example's solver, shortened: 2 iterations,
#                                                 iter_size 1, test_iter ITERATIONS
#   examples/squeezenet/squeezenet_v1.0.caffemodel  seeded filler weights (make_filler_weights.py)
#
# Filler weights classify nothing (accuracy 0), so the search's numbers mean nothing here: the
# test shows that the scripts, the quantized net and the data path work. About a minute.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
images="${IMAGES:-$repo/../shared/data/images/foolbox_imagenet}"
iterations="${ITERATIONS:-2}"   # TEST batches of 10 per scoring run: 2 x 10 = the 20 photos

if [ ! -d "$images" ]; then
	cat <<EOF
smoke_test.sh: SKIPPED: no sample photos at $images.
The smoke test builds its tiny ImageNet-like LMDB from 20 labelled ImageNet sample photos
(imagenet_NN_LABEL.jpg) kept in the data folder beside the checkout (../shared/data), which is
not part of the repository. To run it anyway, point IMAGES at a folder of JPEG photos whose
names end in _LABEL.jpg (LABEL an ImageNet class index 0-999):
    IMAGES=/path/to/photos examples/squeezenet/smoke_test.sh
EOF
	exit 0
fi
images="$(cd "$images" && pwd)"

PYTHON="${PYTHON:-$repo/.venv/bin/python}"
RISTRETTO="${RISTRETTO:-$repo/.venv/bin/ristretto}"
for tool in "$PYTHON" "$RISTRETTO"; do
	[ -x "$tool" ] || { echo "smoke_test.sh: no $tool; do the README's set-up first" >&2; exit 1; }
done
export RISTRETTO

root="$repo/out/squeezenet-smoke"
rm -rf "$root"
mkdir -p "$root/examples/imagenet" "$root/examples/squeezenet" "$root/logs"
echo "smoke_test.sh: work folder $root (logs in logs/)"
start=$SECONDS

# step NAME COMMAND...: run COMMAND with its output in logs/NAME.log; on failure show its end.
step() {
	local name="$1"; shift
	echo "  $ $*"
	if ! "$@" > "$root/logs/$name.log" 2>&1; then
		echo "smoke_test.sh: FAILED: $name; the end of $root/logs/$name.log:" >&2
		tail -n 20 "$root/logs/$name.log" >&2
		exit 1
	fi
}
# result NAME: the mean outputs a test or quantize run printed last.
result() {
	grep -E '\] (accuracy|accuracy_top5|loss) = ' "$root/logs/$1.log" | tail -n 3 | sed 's/.*\] /      /'
}

echo "1. a tiny ImageNet-like LMDB from $(ls "$images"/*.jpg | wc -l) photos"
(cd "$images" && for f in *.jpg; do n="${f%.jpg}"; echo "$f ${n##*_}"; done) > "$root/list.txt"
step convert_val "$RISTRETTO" convert_imageset --resize_height=256 --resize_width=256 \
	"$images/" "$root/list.txt" "$root/examples/imagenet/ilsvrc12_val_lmdb"
step convert_train "$RISTRETTO" convert_imageset --resize_height=256 --resize_width=256 --shuffle --seed=1 \
	"$images/" "$root/list.txt" "$root/examples/imagenet/ilsvrc12_train_lmdb"

echo "2. the net with smaller batches, and seeded filler weights"
sed -e 's/batch_size: 32 #\*iter_size/batch_size: 4/' -e 's/batch_size: 25 #not \*iter_size/batch_size: 10/' \
	"$here/train_val.prototxt" > "$root/examples/squeezenet/train_val.prototxt"
[ "$(grep -cE 'batch_size: (4|10)$' "$root/examples/squeezenet/train_val.prototxt")" = 2 ] ||
	{ echo "smoke_test.sh: could not change the batch sizes of train_val.prototxt" >&2; exit 1; }
sed -e "s/^test_iter: 2000/test_iter: $iterations/" -e 's/^max_iter: 2000/max_iter: 2/' -e 's/^iter_size: 32/iter_size: 1/' \
	"$here/solver_finetune.prototxt" > "$root/examples/squeezenet/solver_finetune.prototxt"
[ "$(grep -cE "^(test_iter: $iterations|max_iter: 2|iter_size: 1)( |\$)" "$root/examples/squeezenet/solver_finetune.prototxt")" = 3 ] ||
	{ echo "smoke_test.sh: could not shorten solver_finetune.prototxt" >&2; exit 1; }
(cd "$root" && step filler_weights "$PYTHON" "$here/make_filler_weights.py" \
	examples/squeezenet/train_val.prototxt examples/squeezenet/squeezenet_v1.0.caffemodel --seed 1)
tail -n 1 "$root/logs/filler_weights.log" | sed 's/^/      /'

echo "3. the example's scripts, with ROOT=$root ITERATIONS=$iterations"
export ROOT="$root" ITERATIONS="$iterations"
step 00_quantize "$here/00_quantize_squeezenet.sh"
grep -A3 'Dynamic fixed point net:' "$root/logs/00_quantize.log" | sed 's/.*\] /      /'
[ -s "$root/examples/squeezenet/quantized.prototxt" ] ||
	{ echo "smoke_test.sh: 00 wrote no quantized.prototxt" >&2; exit 1; }
step benchmark_floatingpoint "$here/benchmark_floatingpoint_squeezenet.sh"
result benchmark_floatingpoint
step 01_finetune "$here/01_finetune_squeezenet.sh"
grep -E 'Snapshotting to binary' "$root/logs/01_finetune.log" | sed 's/.*\] /      /'
step 02_benchmark_fixedpoint env WEIGHTS=examples/squeezenet/squeezenet_iter_2.caffemodel \
	"$here/02_benchmark_fixedpoint_squeezenet.sh"
result 02_benchmark_fixedpoint

echo "smoke_test.sh: OK in $((SECONDS - start)) s"
