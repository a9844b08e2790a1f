"""``Parameter``: a Tensor that a ``Module`` registers as one of its learnable weights."""
from __future__ import annotations

import numpy as np

from ..autograd import Tensor, get_default_dtype


class Parameter(Tensor):
    """A leaf Tensor that requires a gradient (by default) and is registered by ``Module``.

    ``Parameter(data)`` shares ``data``'s array when ``data`` is a Tensor (as PyTorch's
    ``nn.Parameter`` shares storage); ``Parameter()`` is an empty parameter of the default dtype.
    Assigning a Parameter as a module attribute (``self.weight = Parameter(...)``) adds it
    to ``module.parameters()``.
    """

    def __init__(self, data=None, requires_grad=True):
        if data is None:
            data = np.empty((0,), dtype=get_default_dtype())
        super().__init__(data.data if isinstance(data, Tensor) else data,
                         requires_grad=requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()

    def __reduce_ex__(self, protocol):  # copy.deepcopy / pickle keep the class and flag
        return (_rebuild_parameter, (self.data, self.requires_grad, self.grad))


def _rebuild_parameter(data, requires_grad, grad):
    p = Parameter(data, requires_grad=requires_grad)
    p.grad = grad
    return p
