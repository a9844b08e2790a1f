"""Array-level kernels the ops call (raw NumPy/CuPy arrays in, arrays out, no autograd).

``minidl.kernels.im2col`` holds ``im2col`` / ``col2im``, which unfold and fold convolution
windows: a readable NumPy reference for each, and a numba fast path behind the same
signature (numba is imported lazily, only inside this package). Import the functions
from the submodule (``from minidl.kernels.im2col import im2col``); they are not
re-exported here because the function and the module share the name.
"""

import os as _os

# One threading policy for every numba kernel here: serial unless MINIDL_NUMBA_PARALLEL=1
# (read at import). On a 2-core machine parallel kernels lost next to the GEMMs: OpenBLAS's
# worker threads spin after each product and numba's OpenMP threads after each kernel, so
# each library found a core taken by the other's spinning (measured: LeNet training step
# 35 ms with parallel pooling kernels, 13 ms with serial ones; see kernels/_fast.py).
NUMBA_PARALLEL = _os.environ.get("MINIDL_NUMBA_PARALLEL", "0") == "1"
