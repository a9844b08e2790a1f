"""Array-level kernels the ops call (raw NumPy/CuPy arrays in, arrays out, no autograd).

``im2col`` / ``col2im`` unfold and fold convolution windows; each has a readable NumPy
reference and a numba fast path behind the same signature (numba is imported lazily,
only here).
"""
from .im2col import col2im, conv_output_size, im2col

__all__ = ["im2col", "col2im", "conv_output_size"]
