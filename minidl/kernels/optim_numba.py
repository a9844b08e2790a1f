"""numba kernel of the SGD family (``kernels/optim.py`` holds the reference, the formulas
and the registration): one pass over a parameter's elements.

    p, g, buf: (*) NumPy float32/float64 arrays of one dtype and shape; p and buf
    C-contiguous (updated through flat views), g read only

Each element is read once (p, g and, with momentum, buf) and written once (p, buf): the
reference's 4-6 whole-array passes and their temporaries become one loop. The options
are loop-invariant flags (``maximize``, weight decay, Nesterov), applied as selects that
keep the loop vectorised; the momentum cases (none, first step, later steps) are three
loops.

Exactly the reference's numbers: the scalars are converted to the array's dtype (float32
arithmetic for float32 parameters, as in PyTorch), every operation is the reference's in
its order, and the kernel is compiled without fastmath, so LLVM fuses no multiply-add.
Large parameters run the loop's parallel build (numba's threads, the policy in
``kernels/threads.py``): each element's update is the same whichever thread makes it.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from .threads import jit

__all__ = ["sgd_step"]

_PLAIN, _FIRST, _LATER = 0, 1, 2      # no momentum; momentum, first step; later steps


@jit(fastmath=False)   # no contraction into FMA: the reference's roundings, to the bit
def _sgd_loop(p, g, buf, lr, momentum, keep, weight_decay, decay, nesterov, maximize, mode):
    """p, g, buf: flat arrays of one length (buf unused when mode is _PLAIN); keep is
    1 - dampening; the scalars are in the arrays' dtype."""
    if mode == _PLAIN:
        for i in prange(p.size):
            pi = p[i]
            gi = -g[i] if maximize else g[i]
            gi = gi + weight_decay * pi if decay else gi
            p[i] = pi - lr * gi
    elif mode == _FIRST:
        for i in prange(p.size):
            pi = p[i]
            gi = -g[i] if maximize else g[i]
            gi = gi + weight_decay * pi if decay else gi
            buf[i] = gi
            d = gi + momentum * gi if nesterov else gi
            p[i] = pi - lr * d
    else:
        for i in prange(p.size):
            pi = p[i]
            gi = -g[i] if maximize else g[i]
            gi = gi + weight_decay * pi if decay else gi
            b = buf[i] * momentum + keep * gi
            buf[i] = b
            d = gi + momentum * b if nesterov else b
            p[i] = pi - lr * d


def sgd_step(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, maximize):
    """``optim.sgd_step_reference`` in one pass (p, buf in place); returns buf (a new one on
    the first step with momentum, None without momentum)."""
    if momentum == 0:
        mode, buf = _PLAIN, None
    elif buf is None:
        mode, buf = _FIRST, np.empty_like(p)     # C-contiguous like p
    else:
        mode = _LATER
    flat_p = p.reshape(-1)                        # views: p is C-contiguous
    flat_g = np.ascontiguousarray(g).reshape(-1)
    # without momentum the kernel never touches buf: p's view stands in (one signature)
    flat_b = flat_p if buf is None else buf.reshape(-1)
    t = p.dtype.type                              # float32 scalars for float32 arithmetic
    scalars = (t(lr), t(momentum), t(1 - dampening), t(weight_decay), weight_decay != 0,
               bool(nesterov), bool(maximize), mode)
    _sgd_loop(flat_p, flat_g, flat_b, *scalars, size=p.size)
    return buf
