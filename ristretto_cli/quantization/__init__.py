"""Ristretto number formats: trim any float32 array to dynamic fixed point, minifloat or
integer powers of two, bit-exactly as Ristretto does.

Functions (x is converted to float32; ``out=x`` trims in place, also through strided views):

* ``trim_dfp(x, bw, fl, rounding="nearest", *, semantics="ristretto", rng=None, out=None)``
* ``trim_minifloat(x, mant_bits, exp_bits, rounding="nearest", *, semantics=..., rng=..., out=...)``
* ``trim_pow2(x, exp_min, exp_max, rounding="nearest", *, semantics=..., rng=..., out=...)``

``rounding`` is ``"nearest"`` or ``"stochastic"`` (or the proto enum values 0 / 1); stochastic
rounding needs ``rng``, a ``numpy.random.Generator``. ``semantics`` is ``"ristretto"`` (the
default: Ristretto's GPU arithmetic, ties to even) or ``"caffe-cpu"`` (its CPU arithmetic, ties
away from zero); see ``formats`` for the details.

Format objects carry the parameters: ``DynamicFixedPoint(bw, fl)``, ``Minifloat(mant_bits,
exp_bits)``, ``PowerOfTwo(exp_min, exp_max)``, each with ``.trim(...)``, ``.grid_min``,
``.grid_max`` and a short ``str()`` such as ``DFP(8,4)``.

Example::

    >>> import numpy as np
    >>> from ristretto_cli.quantization import DynamicFixedPoint, trim_dfp
    >>> x = np.array([0.03125, 0.15625, 8.1, -1.3], dtype=np.float32)
    >>> trim_dfp(x, 8, 4)                          # ties to even, clipped to [-8, 7.9375]
    array([ 0.    ,  0.125 ,  7.9375, -1.3125], dtype=float32)
    >>> trim_dfp(x, 8, 4, semantics="caffe-cpu")   # C round(): ties away from zero
    array([ 0.0625,  0.1875,  7.9375, -1.3125], dtype=float32)
    >>> fmt = DynamicFixedPoint(8, 4)
    >>> _ = fmt.trim(x, "stochastic", rng=np.random.default_rng(0), out=x)  # in place
    >>> str(fmt), fmt.grid_min, fmt.grid_max
    ('DFP(8,4)', -8.0, 7.9375)
"""

from . import formats
from .formats import *  # noqa: F403  (the public names: formats.__all__)

__all__ = list(formats.__all__)
