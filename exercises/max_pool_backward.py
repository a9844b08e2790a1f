"""Exercise 3: the backward pass of 2-D max pooling, in NumPy.

Check your answer from the repository root:

    python -m minidl.explain.check exercises/max_pool_backward.py

The checker runs ``max_pool_backward`` on four small geometries (windows that tile the
input, windows that overlap, non-square windows and strides, strides that leave some pixels
out) and compares dx with minidl's autograd. Every window's values are distinct, so there
are no ties to worry about.

The task
--------
The forward pass keeps the largest value of each window (no padding):

    out[n, c, oh, ow] = max over kh < KH, kw < KW of x[n, c, oh*SH + kh, ow*SW + kw]

Write ``max_pool_backward(dout, x, kernel_size, stride) -> dx``:

    dout         (N, C, OH, OW)     d(loss)/d(out), given
    x            (N, C, H, W)       the forward pass's input
    kernel_size  int or (KH, KW)
    stride       int or (SH, SW)    OH = (H - KH) // SH + 1, OW likewise
    dx           (N, C, H, W)

Hints
-----
- Only one element of a window made it to the output. What does nudging any of the
  others change?
- Loop over the output positions (oh, ow); take the window of every image and channel at
  once, ``x[:, :, h0:h0 + KH, w0:w0 + KW]``, and build a mask of where its maximum sits
  (compare with ``window.max(axis=(2, 3), keepdims=True)``).
- When the stride is smaller than the window, windows overlap: one pixel can be the
  maximum of two windows and must receive both gradients.
- Pixels no window reaches get 0.
"""
import numpy as np


def max_pool_backward(dout, x, kernel_size, stride):
    """dx (N, C, H, W) of max pooling with windows kernel_size and steps stride (ints or
    (h, w) pairs), given dout (N, C, OH, OW)."""
    # TODO: your code here.
    raise NotImplementedError("max_pool_backward: write it, then run "
                              "python -m minidl.explain.check exercises/max_pool_backward.py")
