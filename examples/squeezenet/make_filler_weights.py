#!/usr/bin/env python3
"""Save seeded filler weights for a net as a .caffemodel, through the pycaffe-compatible API.

    python make_filler_weights.py NET.prototxt OUT.caffemodel [--seed 1]

The net is built in the TEST phase, so its TEST data source must exist (run it from the folder
the prototxt's relative paths start at). The weights are the layers' own fillers (xavier,
gaussian, constant, ...) drawn from a generator seeded with --seed: the same seed gives the same
file. They classify nothing; they stand in for trained weights when checking that a pipeline
runs (examples/squeezenet/smoke_test.sh).
"""

from __future__ import annotations

import argparse

from ristretto_cli import pycaffe as caffe


def main() -> None:
    parser = argparse.ArgumentParser(description="Save a net's seeded filler weights as a caffemodel.")
    parser.add_argument("net", help="net prototxt")
    parser.add_argument("out", help="caffemodel to write")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fillers (default 1)")
    args = parser.parse_args()

    caffe.set_random_seed(args.seed)
    net = caffe.Net(args.net, caffe.TEST)
    net.save(args.out)
    count = sum(blob.count for blobs in net.params.values() for blob in blobs)
    print(f"wrote {args.out}: {len(net.params)} layers, {count:,} parameters (seed {args.seed})")


if __name__ == "__main__":
    main()
