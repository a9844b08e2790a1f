"""The SGD kernel family: one in-place update of a parameter by stochastic gradient descent
(``minidl.optim.SGD.step`` calls it once per parameter).

    p, g, buf: (*), one shape (the parameter, its gradient, its momentum buffer)

    sgd_step(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, maximize) -> buf

PyTorch's update (``torch.optim.SGD``), in this order, each step rounded in p's dtype::

    g = -g                                    if maximize
    g = g + weight_decay * p                  if weight_decay != 0
    buf = g                                   first step (buf None): a new array
    buf = momentum * buf + (1 - dampening) * g     later steps, in place
    g = g + momentum * buf  if nesterov  else  buf      (only when momentum != 0)
    p = p - lr * g                            in place

p and buf are updated in place, g is never written; the return value is the momentum
buffer (the new one on the first step; None when momentum == 0).

Implementations (``minidl.kernels.registry`` chooses; ``use_impl`` forces one):

* ``reference``: the formulas above as whole-array NumPy/CuPy operations, on either
  device and any dtype. 4-6 passes over memory per parameter, and temporaries.
* ``numba`` (``optim_numba.py``): one pass per parameter (read p, g, buf; write p, buf),
  with the same operations in the same order and no fused multiply-add, so it equals the
  reference to the bit. For NumPy float32/float64 arrays of one dtype with p (and buf)
  C-contiguous and writeable; large parameters run on numba's threads (the policy in
  ``kernels/threads.py``).
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from . import registry

__all__ = ["SGD_STEP", "sgd_step", "sgd_step_reference", "numba_can_run"]

def sgd_step_reference(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, maximize):
    """The update of the module docstring with whole-array operations (p, buf in place)."""
    if maximize:
        g = -g
    if weight_decay != 0:
        g = g + weight_decay * p
    if momentum != 0:
        if buf is None:
            buf = g.copy()
        else:
            buf *= momentum
            buf += (1 - dampening) * g
        g = g + momentum * buf if nesterov else buf
    p -= lr * g
    return buf


def _writable_c_array(a, like):
    return (type(a) is np.ndarray and a.dtype == like.dtype and a.shape == like.shape
            and a.flags.c_contiguous and a.flags.writeable)


def numba_can_run(p, g, buf=None):
    """NumPy float32/float64 arrays of one dtype and shape; p and buf C-contiguous and
    writeable (the kernel writes through flat views); g any layout (read only)."""
    return (type(p) is np.ndarray and p.dtype in registry.FAST_DTYPES
            and p.flags.c_contiguous and p.flags.writeable
            and type(g) is np.ndarray and g.dtype == p.dtype and g.shape == p.shape
            and (buf is None or _writable_c_array(buf, p)))


SGD_STEP = registry.family("sgd", __doc__)
SGD_STEP.register("reference", lambda: SimpleNamespace(sgd_step=sgd_step_reference))
SGD_STEP.register("numba", registry.numba_module("minidl.kernels.optim_numba"), device="cpu",
                  supports=numba_can_run)


def sgd_step(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, maximize):
    """Update p (and buf) in place by one SGD step; returns the momentum buffer (module
    docstring). buf: None on the first step or when momentum == 0."""
    arrays = (p, g) if buf is None else (p, g, buf)
    return SGD_STEP.code(*arrays).sgd_step(p, g, buf, lr, momentum, dampening, weight_decay,
                                           nesterov, maximize)
