"""Array-level kernels the ops call (raw NumPy/CuPy arrays in, arrays out, no autograd).

``minidl.kernels.im2col`` holds ``im2col`` / ``col2im``, which unfold and fold convolution
windows: a readable NumPy reference for each, and a numba fast path behind the same
signature (numba is imported lazily, only inside this package). Import the functions
from the submodule (``from minidl.kernels.im2col import im2col``); they are not
re-exported here because the function and the module share the name.
"""
