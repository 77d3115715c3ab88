"""ristretto-cli: Caffe's layers and Ristretto's number formats on NumPy."""

__version__ = "0.1.0"
