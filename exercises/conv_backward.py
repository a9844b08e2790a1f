"""Exercise 2: the backward pass of a 2-D convolution, in NumPy.

Check your answer from the repository root:

    python -m minidl.explain.check exercises/conv_backward.py

The checker feeds ``conv_backward`` a random upstream gradient ``dout`` on six small
geometries (square and non-square, strides 1 and 2, padding 0 and more, batches of 2 and 3)
and compares dx, dw and db with minidl's autograd. For each wrong gradient it draws a map of
the wrong positions ('.' right, 'X' wrong), lists the worst elements, and names the mistake
when it recognises one: the kernel not flipped, the padding not cropped from dx, the stride
ignored, the bias summed over the wrong axes, dw not summed over the batch, a wrong border...

The task
--------
The forward pass (exercise 1) is

    out[n, oc, oh, ow] = b[oc] + sum over c, kh, kw of
                         w[oc, c, kh, kw] * x_padded[n, c, oh*SH + kh, ow*SW + kw]

Write ``conv_backward(dout, x, w, b, stride, padding) -> (dx, dw, db)``:

    dout     (N, OC, OH, OW)    d(loss)/d(out), given
    x        (N, C, H, W)       the forward pass's input
    w        (OC, C, KH, KW)    its weights
    b        (OC,)              its bias
    stride   int or (SH, SW)
    padding  int or (PH, PW)
    dx       (N, C, H, W)       d(loss)/dx: the shape of x, NOT of the padded x
    dw       (OC, C, KH, KW)    d(loss)/dw
    db       (OC,)              d(loss)/db

Hints
-----
- Each output value is a sum of products. Differentiate one product
  ``w[oc, c, kh, kw] * x_padded[n, c, oh*SH + kh, ow*SW + kw]``: it sends
  ``dout[n, oc, oh, ow] * x_padded[...]`` to ``dw[oc, c, kh, kw]`` and
  ``dout[n, oc, oh, ow] * w[oc, c, kh, kw]`` to ``dx_padded[n, c, oh*SH + kh, ow*SW + kw]``.
  Add up every contribution; ``+=``, never ``=``.
- The bias is added at every output position of every image.
- The weights are shared by all N images: their gradient is a sum over the batch too.
- Accumulate into a zero ``dx_padded`` the size of the padded input, then cut the padding
  off at the end.
- The same strided slices as in the forward pass work here, once per kernel offset.
- You can also see dx as a convolution of ``dout`` with the kernel. If you go that way,
  mind the stride (spread dout out) and the kernel's orientation.
"""
import numpy as np


def conv_backward(dout, x, w, b, stride, padding):
    """(dx (N, C, H, W), dw (OC, C, KH, KW), db (OC,)) of the convolution, given
    dout (N, OC, OH, OW); stride and padding are ints or (h, w) pairs."""
    # TODO: your code here.
    raise NotImplementedError("conv_backward: write it, then run "
                              "python -m minidl.explain.check exercises/conv_backward.py")
