"""ristretto-cli: Caffe's layers and Ristretto's number formats on NumPy."""

import warnings

__version__ = "0.1.0"

# IEEE arithmetic, quietly, as in Caffe: a net whose values hold NaN or infinities (a
# diverged snapshot, a damaged file) computes NaN and infinities, without a NumPy warning
# naming one of our source lines. Warnings of other code are left as they are.
warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"ristretto_cli(\.|$)")
