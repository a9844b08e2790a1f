"""Exercise 1: the forward pass of a 2-D convolution, in NumPy.

Check your answer from the repository root:

    python -m minidl.explain.check exercises/conv_forward.py

The checker calls ``conv_forward`` on six small geometries (square and non-square inputs
and kernels, strides 1 and 2, padding 0 and more, batches of 2 and 3) and compares your
``out`` with ``minidl.nn.functional.conv2d``. When something is wrong it draws where (a map
of the output positions), lists the worst elements and, when it recognises the mistake,
names it.

The task
--------
Write ``conv_forward(x, w, b, stride, padding) -> out``:

    x        (N, C, H, W)       a batch of N images with C channels
    w        (OC, C, KH, KW)    OC filters, each C x KH x KW
    b        (OC,)              one bias per filter
    stride   int or (SH, SW)    the step between two windows, down and across
    padding  int or (PH, PW)    zero rows added above AND below, zero columns left AND right
    out      (N, OC, OH, OW)    OH = (H + 2*PH - KH) // SH + 1, OW likewise

    out[n, oc, oh, ow] = b[oc] + sum over c, kh, kw of
                         w[oc, c, kh, kw] * x_padded[n, c, oh*SH + kh, ow*SW + kw]

Deep-learning libraries call this a convolution, but the kernel is NOT flipped (it is a
cross-correlation).

Hints
-----
- ``np.pad(x, ((0, 0), (0, 0), (PH, PH), (PW, PW)))`` pads only the two spatial axes.
- An int stride means the same stride both ways: turn both arguments into pairs first.
- Four nested loops (n, oc, oh, ow) with a sum over a window are fine to start with.
  Faster: loop over the KH*KW kernel offsets only; for each offset (kh, kw) the strided
  slice ``x_padded[:, :, kh : kh + SH*(OH-1) + 1 : SH, kw : kw + SW*(OW-1) + 1 : SW]``
  holds, for every output position, the input value that this tap multiplies; combine
  it with ``w[:, :, kh, kw]`` (``np.einsum`` or ``np.tensordot``).
- Print the shapes of your intermediate arrays while you work: most bugs here are shape
  bugs.
"""
import numpy as np


def conv_forward(x, w, b, stride, padding):
    """out (N, OC, OH, OW) of the convolution of x (N, C, H, W) with w (OC, C, KH, KW) plus
    b (OC,); stride and padding are ints or (h, w) pairs."""
    # TODO: your code here.
    raise NotImplementedError("conv_forward: write it, then run "
                              "python -m minidl.explain.check exercises/conv_forward.py")
