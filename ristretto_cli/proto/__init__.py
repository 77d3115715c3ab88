"""Python bindings generated from proto/caffe.proto (run `make proto` after editing it)."""

from ristretto_cli.proto import caffe_pb2

__all__ = ["caffe_pb2"]
