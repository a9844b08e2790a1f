"""minidl: a from-scratch deep learning engine on NumPy (CPU) and CuPy (GPU).

The public face: ``Tensor`` (its operators and methods attached below) and its
factories, grad-mode switches, seeding, devices, ``save``/``load``, and ``gradcheck``. Layers live in ``minidl.nn``, optimisers in
``minidl.optim``.
"""
from __future__ import annotations

import numpy as _np

from . import backend, cuda, ops  # cuda: minidl.cuda.is_available() etc. (torch.cuda's names)
from . import tensor_methods

# Tensor's operators and methods (x + y, x.sum(), x.reshape()...) are the ops' functions,
# attached here, once, in the one visible place: tensor_methods.py says why they cannot be
# written in Tensor's class body (the autograd core sits below the ops).
tensor_methods.attach()

from .autograd import Function, Tensor, enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from .backend import Device as device
from .creation import (arange, as_tensor, empty, empty_like, eye, from_numpy, full, full_like,
                       linspace, ones, ones_like, rand, rand_like, randint, randn, randn_like,
                       randperm, tensor, zeros, zeros_like)
from .kernels.threads import get_num_threads, set_num_threads
from .kernels.memory import apply_default_policy as _apply_default_policy
from .kernels.memory import get_memory_policy, set_buffer_cache, set_memory_policy
from .gradcheck import GradcheckError, gradcheck, gradgradcheck
from .ops import (abs, add, all, amax, any, argmax, argmin, cat, clamp, clip, clone,
                  concatenate, div, eq, exp, expand, flatten, ge, gt, le, log, lt, matmul, max,
                  maximum, mean, min, minimum, mul, ne, neg, pad, permute, pow, reshape, sqrt,
                  squeeze, stack, std, sub, sum, transpose, unsqueeze, var, where)
from .ops.activation import log_softmax, relu, sigmoid, softmax, tanh
from .ops import (allclose, argsort, bincount, bmm, chunk, cos, cumsum, einsum, gather, isclose,
                  lerp, masked_fill, nonzero, norm, scatter, scatter_add, sin, sort, split,
                  topk, unique)
from . import linalg  # minidl.linalg.vector_norm etc. (torch.linalg's names)
from .random import initial_seed, manual_seed
from .serialization import CheckpointError, load, save
from . import nn, optim  # noqa: E402 - above ops, imported last
from . import data, metrics, models  # noqa: E402
from .summary import summary  # noqa: E402
from .autograd import (Size, get_default_dtype, inference_mode,  # noqa: E402
                       is_inference_mode_enabled, set_default_dtype)
from .random import Generator, default_generator, seed  # noqa: E402
from . import backends, utils  # noqa: E402 - torch.backends' flags, torch.utils.data's path
from . import explain, viz  # noqa: E402 - the teaching tools, on top of everything

float32 = _np.dtype(_np.float32)
float64 = _np.dtype(_np.float64)
float16 = _np.dtype(_np.float16)
int64 = _np.dtype(_np.int64)
int32 = _np.dtype(_np.int32)
uint8 = _np.dtype(_np.uint8)
bool = _np.dtype(_np.bool_)  # noqa: A001 - PyTorch's name
float = float32  # noqa: A001
double = float64
long = int64

__version__ = "0.1.0"

# Freed CPU memory stays in the process for the next step (kernels/memory.py: a training
# loop otherwise faults its arrays' pages in again every step).
_apply_default_policy()
