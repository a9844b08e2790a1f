"""Tensor, Function and the backward pass.

A ``Tensor`` wraps a raw array (NumPy on the CPU, CuPy on the GPU). A ``Function``
is a differentiable primitive written on raw arrays::

    class Exp(Function):
        @staticmethod
        def forward(ctx, x):                # x: raw array
            y = xp.exp(x)
            ctx.save_for_backward(y)
            return y
        @staticmethod
        def backward(ctx, gy):              # gy: dL/dy, same shape as y
            (y,) = ctx.saved_tensors
            return gy * y                   # dL/dx, one gradient per input

    exp = Exp.apply                         # the lowercase wrapper takes Tensors

``Function.apply`` runs ``forward`` on the arrays and, when any input requires a
gradient (and grad mode is on), records a graph node: the ``ctx`` object itself.
``Tensor.backward`` walks those nodes once each, in reverse topological order
(iteratively: a deep ResNet must not hit Python's recursion limit), so a node runs
only after every consumer of its outputs has passed its gradient back.

Higher-order gradients: ``backward(create_graph=True)`` and ``autograd.grad(...,
create_graph=True)`` run each node's ``differentiable_backward`` instead: the same
gradient written in minidl ops on Tensors, so the backward pass is itself recorded and
can be differentiated again (a gradient penalty, a Hessian-vector product). There
``ctx.saved_tensors`` gives Tensors: the input or output Tensor an array came from, or a
constant Tensor for an array the forward computed (a mask, pooling indices). A Function
whose ``backward`` only uses operations that Tensors share with arrays (``gy * y``,
``unbroadcast``) says ``differentiable_backward = backward``. Without ``create_graph``
the raw-array ``backward`` runs, unchanged: the fast path pays nothing.

Tensor methods and operators (``+``, ``@``, ``.sum()``, ``.reshape()`` ...) are the ops'
functions, attached to the class in one place, ``minidl/tensor_methods.py`` (called from
``minidl/__init__.py``): the ops sit above this module, so the class body cannot name them.
"""
from __future__ import annotations

import functools
import inspect
import itertools
import threading
import weakref

import numpy as np

from . import backend
from .kernels import memory

# ----------------------------------------------------------------------------- grad mode
# Grad mode is a per-thread flag, as in PyTorch: a data-loading or serving thread inside
# ``no_grad()`` must not stop the main thread's training from recording, and every new
# thread starts with recording on (``is_grad_enabled`` defaults to True).

_state = threading.local()


def is_grad_enabled():
    """Whether operations are recorded for backward in this thread (True unless inside
    ``no_grad()`` or after ``set_grad_enabled(False)``)."""
    return getattr(_state, "grad_enabled", True)


def _set_mode(mode):
    _state.grad_enabled = mode


class _GradMode:
    """Base of ``no_grad``, ``enable_grad`` and ``set_grad_enabled``: a context manager
    that is also a decorator.

    As a decorator it enters a *fresh* context (``clone()``) on every call, never the
    decorating instance itself: one shared instance would keep one remembered previous
    mode for every call, and a recursive call (or the same function running in two
    threads) would overwrite it, leaving grad mode wrong after the outer call returns.
    A decorated generator function runs each of its steps inside the context, and the
    caller's own code between two ``next()`` calls outside it (PyTorch's rule).
    """

    def clone(self):
        return self.__class__()

    def __call__(self, func):
        if inspect.isgeneratorfunction(func):
            return self._wrap_generator(func)

        @functools.wraps(func)
        def decorated(*args, **kwargs):
            with self.clone():
                return func(*args, **kwargs)
        return decorated

    def _wrap_generator(self, func):
        @functools.wraps(func)
        def decorated(*args, **kwargs):
            gen = func(*args, **kwargs)
            sent, thrown = None, None        # what the caller passed in at the last yield
            while True:
                with self.clone():           # one step of the generator, in grad mode
                    try:
                        value = gen.throw(thrown) if thrown is not None else gen.send(sent)
                    except StopIteration as stop:
                        return stop.value
                try:
                    sent, thrown = (yield value), None
                except GeneratorExit:        # the caller closed us: close the inner one too
                    with self.clone():
                        gen.close()
                    raise
                except BaseException as exc:  # gen.throw(...) from the caller: pass it in
                    sent, thrown = None, exc
        return decorated


class no_grad(_GradMode):
    """``with minidl.no_grad():`` (or ``@minidl.no_grad()``) runs operations without
    recording a graph, and restores the previous mode on exit, also after an exception."""

    def __enter__(self):
        self._prev = is_grad_enabled()
        _set_mode(False)

    def __exit__(self, *exc):
        _set_mode(self._prev)
        return False


def is_inference_mode_enabled():
    """Whether this thread is inside ``inference_mode()`` (PyTorch's name)."""
    return getattr(_state, "inference", False)


class inference_mode(_GradMode):  # noqa: N801 - PyTorch's name
    """``with minidl.inference_mode():``, ``@minidl.inference_mode()`` or a bare
    ``@minidl.inference_mode``: run without recording, like ``no_grad()``, for evaluation
    and serving code written for PyTorch.

    Tensors made inside are plain tensors that do not require grad. PyTorch also marks
    them "inference tensors" (faster to make, refused by autograd afterwards); minidl has
    no such kind of tensor, so here this is exactly ``no_grad()`` plus the flag that
    ``is_inference_mode_enabled()`` reads. ``inference_mode(False)`` turns it off inside an
    enclosing one: recording is on again (as in PyTorch, where the mode sets grad mode to
    ``not mode``).
    """

    def __new__(cls, mode=True):
        if callable(mode) and not isinstance(mode, (bool, np.bool_)):  # a bare decorator
            context = super().__new__(cls)
            context.__init__(True)
            return context(mode)         # the decorated function, not a context
        return super().__new__(cls)

    def __init__(self, mode=True):
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"inference_mode(): mode must be a bool, got "
                            f"{type(mode).__name__} {mode!r}")
        self.mode = bool(mode)

    def clone(self):
        return inference_mode(self.mode)

    def __enter__(self):
        self._prev = (is_grad_enabled(), is_inference_mode_enabled())
        _set_mode(not self.mode)
        _state.inference = self.mode

    def __exit__(self, *exc):
        _set_mode(self._prev[0])
        _state.inference = self._prev[1]
        return False


class enable_grad(_GradMode):
    """``with minidl.enable_grad():`` (or ``@minidl.enable_grad()``) records again inside
    ``no_grad()``, and restores the previous mode on exit."""

    def __enter__(self):
        self._prev = is_grad_enabled()
        _set_mode(True)

    def __exit__(self, *exc):
        _set_mode(self._prev)
        return False


class set_grad_enabled(_GradMode):  # noqa: N801 - PyTorch's name: a call as much as a class
    """Turn recording on or off, three ways, as ``torch.set_grad_enabled``::

        minidl.set_grad_enabled(False)          # a plain call: off from now on
        with minidl.set_grad_enabled(False):    # off inside, the previous mode after
            ...
        @minidl.set_grad_enabled(False)         # off while the function runs
        def evaluate(model, x): ...

    The mode is set by the constructor itself (that is what makes the plain call work);
    ``__exit__`` restores the mode that was in force before. Used as a decorator, making
    the object must not change the mode for the code that follows the ``def``, so
    ``__call__`` puts the previous mode back at once.
    """

    def __init__(self, mode):
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"set_grad_enabled(): mode must be a bool, got "
                            f"{type(mode).__name__} {mode!r}")
        self.mode = bool(mode)
        self._prev = is_grad_enabled()
        _set_mode(self.mode)

    def clone(self):
        return set_grad_enabled(self.mode)

    def __call__(self, func):
        _set_mode(self._prev)
        return super().__call__(func)

    def __enter__(self):
        pass

    def __exit__(self, *exc):
        _set_mode(self._prev)
        return False


# ----------------------------------------------------------------------------- dtypes

# The default floating dtype: what Python floats, factories (zeros, randn...) and layers'
# parameters get when no dtype is asked for. ``DEFAULT_FLOAT`` is its initial value, kept
# for code that imported the name; read the current one with ``get_default_dtype()``
# (a name imported with ``from .autograd import DEFAULT_FLOAT`` would not follow a change).
DEFAULT_FLOAT = np.dtype(np.float32)
_default_float = DEFAULT_FLOAT


def get_default_dtype():
    """The current default floating dtype (float32 unless ``set_default_dtype`` changed it)."""
    return _default_float


def set_default_dtype(d):
    """Make ``d`` (``minidl.float32`` or ``minidl.float64``) the dtype of new floating
    tensors: Python floats, factories and layer parameters made from now on (process-wide,
    as in PyTorch). ``set_default_dtype(minidl.float64)`` is how a script is compared with
    PyTorch tightly, or gradchecked."""
    global _default_float
    try:
        dt = np.dtype(d)
    except TypeError:
        raise TypeError(f"set_default_dtype(): expected a dtype such as minidl.float64, got "
                        f"{d!r}") from None
    if dt not in (np.float32, np.float64):
        raise TypeError(f"set_default_dtype(): only floating-point types are supported as the "
                        f"default type (minidl.float32 or minidl.float64), got {dt}")
    _default_float = dt


def _as_array(data, dtype=None):
    """A NumPy/CuPy array from array-likes; Python floats become the default dtype
    (float32 unless changed), as in PyTorch."""
    if isinstance(data, Tensor):
        data = data.data
    xp = backend.get_array_module(data)
    if xp is np and not isinstance(data, np.ndarray):
        arr = np.asarray(data)
        if dtype is None and arr.dtype == np.float64 and not isinstance(data, np.generic):
            arr = arr.astype(_default_float)  # Python floats and lists of them
    else:
        arr = data
    if dtype is not None and arr.dtype != np.dtype(dtype):
        arr = arr.astype(dtype)
    return arr


# ----------------------------------------------------------------------------- Tensor


def parse_to_args(args, kwargs):
    """(Device or None, numpy dtype or None) from ``.to(...)``'s arguments, for Tensor.to and
    Module.to: ``to('cuda')``, ``to(minidl.float64)``, ``to('cpu', dtype)``, ``to(tensor)``
    (its device and dtype), ``device=``/``dtype=`` keywords; ``non_blocking`` is ignored."""
    kwargs = dict(kwargs)
    device = kwargs.pop("device", None)
    dtype = kwargs.pop("dtype", None)
    kwargs.pop("non_blocking", None)
    if kwargs:
        raise TypeError(f"to(): unexpected arguments {sorted(kwargs)}")
    for a in args:
        if isinstance(a, Tensor):
            device, dtype = a.device, a.dtype
        elif isinstance(a, (str, backend.Device)):
            device = a
        elif isinstance(a, bool):  # non_blocking, positionally
            continue
        else:
            dtype = a
    if device is not None:
        device = backend.Device(device)
    if dtype is not None:
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"to(): {dtype!r} is neither a device nor a dtype") from None
    return device, dtype



class Size(tuple):
    """A tensor's shape: a tuple of ints (``x.shape == (2, 3)`` holds) that also knows its
    ``numel()``, as ``torch.Size``. Slicing and ``+`` give a Size again.

    ``repr`` is ``minidl.Size([2, 3])``; ``str`` (and so ``f"{x.shape}"``) stays the
    plain tuple ``(2, 3)``: error messages throughout minidl print shapes that way, and
    they read better so. (PyTorch prints ``torch.Size([2, 3])`` for both.)
    """

    __slots__ = ()

    def numel(self):
        """The number of elements of a tensor of this shape (1 for ``()``)."""
        n = 1
        for d in self:
            n *= d
        return n

    def __getitem__(self, key):
        out = tuple.__getitem__(self, key)
        return Size(out) if isinstance(key, slice) else out

    def __add__(self, other):
        if not isinstance(other, tuple):
            return NotImplemented        # a tuple's rule: (2, 3) + [4] is a TypeError
        return Size(tuple.__add__(self, other))

    def __repr__(self):
        return f"minidl.Size({list(self)})"

    def __str__(self):
        return tuple.__repr__(self)

    def __reduce__(self):  # pickles (and deep-copies) as a Size, without the repr
        return (Size, (tuple(self),))


class _VersionCounter:
    """How many in-place changes a tensor's memory has had: one object shared by a tensor
    and its views (and ``detach()``), bumped by every in-place op (``add_``, ``t[i] = v``,
    an optimiser step, ``load_state_dict``...). ``saved_tensors`` compares it with the
    version recorded at forward time."""

    __slots__ = ("v",)

    def __init__(self):
        self.v = 0


class Tensor:
    """An n-dimensional array that can record the operations applied to it.

    ``data`` is the raw array (``numpy.ndarray`` or ``cupy.ndarray``); ``grad`` is a
    Tensor of the same shape once ``backward()`` has reached this tensor; ``grad_fn``
    is the graph node that produced it (``None`` for leaves: tensors made by the
    user, and parameters).
    """

    __array_ufunc__ = None  # make NumPy defer to Tensor's reflected operators

    def __init__(self, data, requires_grad=False, dtype=None):
        # an op's NumPy output is taken as it is (the common case, kept short: every op's
        # every output passes through here)
        self.data = data if dtype is None and type(data) is np.ndarray else _as_array(data, dtype)
        self.grad = None
        self.grad_fn = None      # the Context that produced this tensor, None for leaves
        self._output_nr = 0      # which output of grad_fn this tensor is
        self._retains_grad = False
        self._requires_grad = False
        self._vc = _VersionCounter()  # shared with views; see _VersionCounter
        self._is_view = False
        if requires_grad:
            self.requires_grad = requires_grad

    # --- basic properties -------------------------------------------------------------
    @property
    def requires_grad(self):
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value):
        value = bool(value)
        if value and self.data.dtype.kind not in "fc":
            raise RuntimeError(
                f"only floating point tensors can require gradients, got dtype {self.data.dtype}")
        if not value and self.grad_fn is not None:
            raise RuntimeError("requires_grad can only be changed on leaf tensors; "
                               "use .detach() to get a tensor outside the graph")
        self._requires_grad = value

    def requires_grad_(self, requires_grad=True):
        self.requires_grad = requires_grad
        return self

    @property
    def is_leaf(self):
        return self.grad_fn is None

    @property
    def shape(self):
        """The shape, a ``Size`` (a tuple: ``x.shape == (N, C)``)."""
        return Size(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def device(self):
        return backend.device_of(self.data)

    @property
    def is_cuda(self):
        return self.device.type == "cuda"

    def size(self, dim=None):
        """The shape, or its ``dim``-th entry (``x.size(0)`` is the batch size)."""
        return self.shape if dim is None else self.shape[dim]

    def dim(self):
        return self.data.ndim

    def numel(self):
        return int(self.data.size)

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __hash__(self):  # tensors are hashable by identity, as in PyTorch
        # (defined here, in the class body: attaching __eq__ later, in tensor_methods.py,
        # leaves it in place, whereas a class body with __eq__ and no __hash__ drops it)
        return id(self)

    # --- conversion -----------------------------------------------------------------------
    def item(self):
        """The value of a one-element tensor as a Python number."""
        if self.data.size != 1:
            raise ValueError(
                f"item(): only one-element tensors can be converted to a Python scalar, "
                f"got shape {self.shape}")
        return self.data.reshape(()).item()

    def numpy(self):
        """The CPU array itself (shares memory); a GPU tensor must be moved with .cpu() first."""
        if self.is_cuda:
            raise TypeError("numpy(): this tensor is on the GPU; call .cpu() first "
                            "(or use .tolist() / .item())")
        return self.data

    def __array__(self, dtype=None, copy=None):
        arr = backend.to_numpy(self.data)
        return arr if dtype is None else arr.astype(dtype)

    def tolist(self):
        return backend.to_numpy(self.data).tolist()

    def __bool__(self):
        if self.data.size != 1:
            raise RuntimeError(f"the truth value of a tensor with {self.data.size} elements "
                               "is ambiguous; use .any() or .all()")
        return bool(self.data.reshape(()).item())

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __index__(self):
        if self.dtype.kind not in "iub" or self.data.size != 1:
            raise TypeError("only integer tensors of a single element can be used as an index")
        return int(self.item())

    def __format__(self, format_spec):
        """``f"{loss:.4f}"``: a 0-d tensor formats as its Python number. Any other tensor
        formats only with an empty spec (``f"{x}"`` is ``str(x)``); a spec such as ``.4f``
        raises TypeError, as in PyTorch (format ``x.item()``, or ``x.tolist()``)."""
        if self.ndim == 0:
            return format(self.item(), format_spec)
        return object.__format__(self, format_spec)

    def __repr__(self):
        body = np.array2string(backend.to_numpy(self.data), separator=", ", precision=4,
                               prefix="tensor(")
        extras = []
        if self.is_cuda:
            extras.append(f"device='{self.device}'")
        if self.dtype not in (_default_float, np.int64, np.bool_):
            extras.append(f"dtype=minidl.{self.dtype.name}")
        if self.grad_fn is not None:
            extras.append(f"grad_fn=<{self.grad_fn.name}Backward>")
        elif self.requires_grad:
            extras.append("requires_grad=True")
        return "tensor(" + body + "".join(", " + e for e in extras) + ")"

    # --- graph handling ---------------------------------------------------------------------
    def detach(self):
        """A new leaf tensor sharing the same array (and version counter), outside the graph."""
        t = Tensor(self.data)
        t._vc = self._vc
        t._is_view = True
        return t

    @property
    def _version(self):
        """The number of in-place changes made to this tensor's memory (PyTorch's ``_version``)."""
        return self._vc.v

    def _bump_version(self):
        """Record an in-place change of ``data`` made outside the in-place ops (optimisers,
        ``load_state_dict``, ``nn.init``): graphs that saved this array will refuse backward."""
        self._vc.v += 1

    def retain_grad(self):
        """Keep ``.grad`` on this non-leaf tensor after backward (leaves always keep it)."""
        if not self.requires_grad:
            raise RuntimeError("retain_grad(): this tensor does not require grad")
        if self.grad_fn is not None and not self._retains_grad:
            self._retains_grad = True
            if self.grad_fn._retained is None:
                self.grad_fn._retained = {}
            self.grad_fn._retained[self._output_nr] = weakref.ref(self)
        return self

    @property
    def retains_grad(self):
        return self._retains_grad

    _post_accumulate_hooks = None  # {id: hook}, made by the first registration (leaves only)

    def register_post_accumulate_grad_hook(self, hook):
        """Call ``hook(self)`` once per backward pass, after this leaf's ``.grad`` is final
        for the pass (every node with an edge to it has run), as PyTorch's hook of the same
        name. The hook may read and change ``self`` and ``self.grad``; it runs in
        ``no_grad()`` unless the pass has ``create_graph=True``.

        It fires for every hooked leaf the pass reaches, even when no gradient arrived
        (``.grad`` is then unchanged, possibly ``None``), as in PyTorch; ``backward(inputs=
        ...)`` fires it for the leaves among ``inputs`` only, once their ``.grad`` is
        written; ``autograd.grad`` never fires it (no ``.grad`` changes). Returns a handle:
        ``handle.remove()`` unregisters the hook. ``DistributedDataParallel`` uses it to
        start reducing a bucket of gradients while backward goes on.
        """
        if not self.requires_grad:
            raise RuntimeError("register_post_accumulate_grad_hook(): expected a tensor that "
                               "requires grad, got one that does not (a hook on it would never "
                               "run)")
        if self.grad_fn is not None:
            raise RuntimeError(
                f"register_post_accumulate_grad_hook(): expected a leaf tensor (a parameter, "
                f"or a tensor made with requires_grad=True), got the output of "
                f"{self.grad_fn.name}: only leaves accumulate into .grad (use retain_grad() "
                f"to keep a non-leaf's gradient)")
        if not callable(hook):
            raise TypeError(f"register_post_accumulate_grad_hook(): expected a callable "
                            f"hook(tensor), got {type(hook).__name__}")
        if self._post_accumulate_hooks is None:
            self._post_accumulate_hooks = {}
        return _PostAccumulateHookHandle(self, hook)

    def backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None):
        """Accumulate d(self)/d(leaf) * gradient into the ``.grad`` of every leaf that needs it.

        ``gradient`` defaults to 1 for a one-element tensor. The graph's saved arrays are
        freed afterwards unless ``retain_graph=True`` (which defaults to ``create_graph``).
        ``create_graph=True`` records the backward itself, so the ``.grad`` it leaves can be
        differentiated again. ``inputs``: accumulate only into these tensors' ``.grad``.
        """
        run_backward(self, gradient, retain_graph, create_graph, inputs)

    # --- devices and dtypes ---------------------------------------------------------------
    def to(self, *args, **kwargs):
        """``x.to('cuda')``, ``x.to(minidl.float64)``, ``x.to('cpu', dtype)``: a moved/cast copy."""
        device, dtype = parse_to_args(args, kwargs)
        out = self
        if dtype is not None and dtype != self.dtype:
            out = _cast(out, dtype)
        if device is not None and device != self.device:
            out = _move(out, device)
        return out

    def cuda(self, device=None):
        return self.to("cuda" if device is None else f"cuda:{device}")

    def cpu(self):
        return self.to("cpu")

    def float(self):
        return self.to(np.float32)

    def double(self):
        return self.to(np.float64)

    def long(self):
        return self.to(np.int64)

    def int(self):
        return self.to(np.int32)

    def bool(self):
        return self.to(np.bool_)

    def type_as(self, other):
        return self.to(other.dtype)


# ----------------------------------------------------------------------------- Function


class Context:
    """What a Function's forward leaves for its backward; also the graph node.

    ``save_for_backward(*arrays)`` keeps arrays until backward (freed after it unless
    ``retain_graph=True``). ``needs_input_grad[i]`` says whether input ``i`` wants a
    gradient, so backward can skip the others. Any other attribute (``ctx.stride = 2``)
    may be set freely for small non-array values.
    """

    # Defaults on the class, set on a node only where they differ (one node per op call).
    _saved = ()
    _released = False
    _edges = ()          # per input: (leaf Tensor, None) | (Context, output_nr) | None
    _out_meta = ()       # per output: (shape, dtype) to materialise missing grads
    _retained = None     # {output_nr: weakref to a tensor that called retain_grad()}, or None
    _checks = ()         # (version counter, version, shape) of saved inputs/outputs
    _sources = ()        # per saved array: its input Tensor, its output's index, or None
    _as_tensors = False  # True while differentiable_backward runs (create_graph)

    def __init__(self, fn, needs_input_grad):
        self.fn = fn
        self.needs_input_grad = needs_input_grad

    @property
    def name(self):
        name = self.fn.__name__
        return name[:-len("Function")] if name.endswith("Function") and name != "Function" else name

    @property
    def next_functions(self):
        """Per input: ``(producer Context, output_nr)``, ``(leaf Tensor, None)``, or ``None``
        for an input that needs no gradient (PyTorch's name; tools walk the graph with it)."""
        return self._edges

    @property
    def output_meta(self):
        """Per output: ``(shape, dtype)``."""
        return self._out_meta

    def save_for_backward(self, *arrays):
        self._saved = arrays

    @property
    def saved_tensors(self):
        if self._released:
            raise RuntimeError(
                f"{self.name}: trying to backward through the graph a second time; its saved "
                "values were freed after the first backward. Pass retain_graph=True to the "
                "first backward() if you need to call it again.")
        for vc, version, shape in self._checks:
            if vc.v != version:
                raise RuntimeError(
                    f"{self.name}: one of the tensors needed for its gradient, of shape "
                    f"{shape}, has been modified by an in-place operation: it is at version "
                    f"{vc.v}, expected version {version}. Hint: make the in-place change after "
                    "backward(), or use an out-of-place op instead (x = x * 0 rather than "
                    "x.zero_(), x = x + y rather than x += y), or change a .clone() of it.")
        if self._as_tensors:
            return tuple(self._saved_as_tensor(a, src) for a, src in zip(self._saved, self._sources))
        return self._saved

    def _saved_as_tensor(self, array, source):
        """A saved array as the Tensor a recorded backward differentiates through: the input
        Tensor it is, a Tensor for the output it is (attached to this node, as the output
        was), a constant for an array the forward computed; anything else as it is."""
        if isinstance(source, Tensor):
            return source
        if not hasattr(array, "dtype"):  # None, or a tuple a kernel keeps for itself
            return array
        t = Tensor(array)
        if source is not None and array.dtype.kind in "fc":  # integer outputs: no gradient
            t._requires_grad, t.grad_fn, t._output_nr = True, self, source
        return t

    def _release(self):
        self._saved = ()
        self._released = True

    def __repr__(self):
        return f"<{self.name}Backward>"


def _check_one_device(fn, inputs):
    """Raise unless every Tensor among ``inputs`` is on one device (``fn`` names the op)."""
    device = None
    for t in inputs:
        if isinstance(t, Tensor):
            d = t.device
            if device is None:
                device = d
            elif d != device:
                raise RuntimeError(
                    f"{fn.__name__.removesuffix('Function') or fn.__name__}: expected all "
                    f"tensors on the same device, got {device} and {d}; move them with "
                    ".to(device) first")


def _saved_checks(saved, inputs, outputs):
    """The version checks and sources of a node's saved arrays.

    Returns ``(checks, sources)``: ``checks`` holds ``(counter, version, shape)`` of each
    input or output Tensor whose array the forward saved; ``sources[k]`` says where saved
    array ``k`` came from: the input Tensor it is, the index of the output it is, or
    ``None`` (a recorded backward needs the Tensors themselves, see ``saved_tensors``).

    Forwards save raw arrays, so which Tensor an array belongs to is found by identity: a
    saved array ``s`` stands for Tensor ``t`` when ``s`` is ``t.data``, or when ``s`` and
    ``t.data`` are the same memory's views (one is the other's ``.base``, or both share a
    ``.base``); only ``s is t.data`` makes ``t`` its source. Arrays the forward computed
    (``x > 0``, im2col columns, ``x - mean``) belong to no tensor and are never checked:
    changing the input afterwards cannot change them. Identity, not ``shares_memory``: a
    few set lookups per recorded node.
    """
    ids = set()
    for s in saved:
        if s is not None:
            ids.add(id(s))
            b = getattr(s, "base", None)
            if b is not None:
                ids.add(id(b))
    checks = []
    owner = {}
    n_in = len(inputs)
    for k, t in enumerate(inputs + outputs):
        if isinstance(t, Tensor):
            d = t.data   # an array: its .base is None (never in ids) or the array it views
            if id(d) in ids or id(d.base) in ids:
                vc = t._vc
                checks.append((vc, vc.v, t.shape))
                owner.setdefault(id(d), t if k < n_in else k - n_in)
    sources = tuple([None if s is None else owner.get(id(s)) for s in saved])
    return tuple(checks), sources


class Function:
    """Base class of differentiable primitives; subclasses define ``forward``/``backward``.

    ``forward(ctx, *arrays, **params)`` receives raw arrays (or ``None`` for absent
    optional inputs) and returns an array, or a tuple of arrays for several outputs.
    ``backward(ctx, *grads)`` receives one gradient per output and returns one gradient
    (or ``None``) per positional input.
    """

    _view = False  # True for ops whose output may be a view of input 0 (reshape, getitem...)

    # The gradient in minidl ops on Tensors, run (and recorded) when create_graph=True;
    # None: this op has no higher-order gradient and says so.
    differentiable_backward = None

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **params):
        arrays = []
        needs = []
        numpy_only = True
        for t in inputs:
            if isinstance(t, Tensor):
                a = t.data
                numpy_only = numpy_only and type(a) is np.ndarray
                arrays.append(a)
                needs.append(t._requires_grad)
            else:
                arrays.append(t)
                needs.append(False)
        if not numpy_only:      # NumPy arrays all live on the CPU: nothing to compare
            _check_one_device(cls, inputs)
        record = True in needs and is_grad_enabled()
        ctx = Context(cls, tuple(needs) if record else (False,) * len(needs))
        result = cls.forward(ctx, *arrays, **params)
        multi = isinstance(result, tuple)
        outs = result if multi else (result,)
        tensors = tuple([Tensor(o) for o in outs])
        if cls._view:  # a view shares its base's version counter (as in PyTorch)
            src = inputs[0].data
            base = getattr(src, "base", None)
            for t in tensors:
                o = t.data
                ob = getattr(o, "base", None)
                if o is src or (ob is not None and (ob is src or ob is base)):
                    t._vc = inputs[0]._vc
                    t._is_view = True
        if record:
            edges = []
            for t, need in zip(inputs, needs):
                if not need:
                    edges.append(None)
                elif t.grad_fn is None:
                    edges.append((t, None))
                else:
                    edges.append((t.grad_fn, t._output_nr))
            ctx._edges = tuple(edges)
            ctx._out_meta = tuple([(o.shape, o.dtype) for o in outs])
            if ctx._saved:
                ctx._checks, ctx._sources = _saved_checks(ctx._saved, inputs, tensors)
            for i, t in enumerate(tensors):
                if t.dtype.kind in "fc":
                    t._requires_grad = True
                    t.grad_fn = ctx
                    t._output_nr = i
        return tensors if multi else tensors[0]


# ----------------------------------------------------------------------------- backward pass
# Gradients flow as raw arrays; with create_graph=True as Tensors, each node's
# differentiable_backward recording the ops of its gradient (a graph of the backward).


def _accumulate(buf, i, g):
    """Add gradient ``g`` into slot ``i`` out of place (never mutating a shared array)."""
    buf[i] = g if buf[i] is None else buf[i] + g


def _owned(g, handed_out):
    """``g`` for the caller to keep: copied when it is a view (of another gradient, or a
    broadcast) or was handed out already (``x + y`` gives both inputs one array), so a
    user scaling one ``.grad`` in place never changes another."""
    if g.base is not None or id(g) in handed_out:
        g = g.copy()
    handed_out.add(id(g))
    return g


def _accumulate_leaf(t, g, handed_out):
    """Add ``g`` into leaf ``t``'s ``.grad`` (out of place). A raw ``g`` is stored without
    a copy when this backward pass owns it alone; a Tensor ``g`` (create_graph) is stored
    as it is, graph and all, so the gradient can be differentiated again."""
    if g.dtype != t.dtype:
        g = g.to(t.dtype) if isinstance(g, Tensor) else g.astype(t.dtype)
    if isinstance(g, Tensor):
        t.grad = g if t.grad is None else t.grad + g
    elif t.grad is not None:
        t.grad = Tensor(t.grad.data + g)
    else:
        t.grad = Tensor(_owned(g, handed_out))


def _topological_order(roots):
    """Graph nodes reachable from ``roots``, each after every node that consumes its outputs."""
    order, expanded = [], set()
    stack = [(root, False) for root in roots]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if node in expanded:
            continue
        expanded.add(node)
        stack.append((node, True))
        for edge in node._edges:
            if edge is not None and isinstance(edge[0], Context) and edge[0] not in expanded:
                stack.append((edge[0], False))
    order.reverse()  # post-order reversed: consumers before producers
    return order


def _leading_to(order, targets):
    """The nodes of ``order`` from which a gradient can reach one of ``targets`` (leaves
    by identity, non-leaves through their ``grad_fn``): only these need to run."""
    leaf_ids = {id(t) for t in targets if t.grad_fn is None}
    producers = {t.grad_fn for t in targets if t.grad_fn is not None}
    needed = set()
    for node in reversed(order):  # producers first
        for edge in node._edges:
            if edge is not None and (id(edge[0]) in leaf_ids or edge[0] in needed
                                     or edge[0] in producers):
                needed.add(node)
                break
    return needed


def _seed(root, gradient, create_graph):
    """The gradient backward starts from at ``root``: ``gradient`` (checked against the
    root's shape), or 1 for a one-element root; a Tensor when create_graph."""
    xp = backend.get_array_module(root.data)
    if gradient is None:
        if root.data.size != 1:
            raise RuntimeError(
                f"backward(): grad can be implicitly created only for one-element outputs; "
                f"this tensor has shape {root.shape}, so pass backward(gradient) of that shape")
        g = xp.ones_like(root.data)
    else:
        g = gradient.data if isinstance(gradient, Tensor) else xp.asarray(gradient)
        if tuple(g.shape) != root.shape:
            raise RuntimeError(f"backward(): gradient has shape {tuple(g.shape)}, "
                               f"expected the tensor's shape {root.shape}")
        if create_graph and isinstance(gradient, Tensor):  # it may be in a graph itself
            return gradient if gradient.dtype == root.dtype else gradient.to(root.dtype)
        g = g.astype(root.dtype, copy=False)
    return Tensor(g) if create_graph else g


def _run_node(node, out_grads, create_graph):
    """One node's input gradients from its output gradients (arrays, or Tensors when
    create_graph: then its differentiable_backward runs with recording on)."""
    if not create_graph:
        in_grads = node.fn.backward(node, *out_grads)
    else:
        backward = node.fn.differentiable_backward
        if backward is None:
            raise RuntimeError(f"{node.name}: this op has no higher-order gradient, so "
                               "create_graph=True cannot record its backward")
        node._as_tensors = True
        try:
            with enable_grad():
                in_grads = backward(node, *out_grads)
        finally:
            node._as_tensors = False
    if not isinstance(in_grads, tuple):
        in_grads = (in_grads,)
    if len(in_grads) != len(node._edges):
        raise RuntimeError(f"{node.name}.backward returned {len(in_grads)} gradients, "
                           f"expected {len(node._edges)} (one per input)")
    if create_graph:  # a formula may return a computed constant as an array
        in_grads = tuple(Tensor(g) if g is not None and not isinstance(g, Tensor) else g
                         for g in in_grads)
    return in_grads


# Final callbacks: one list per backward pass in progress (a pass may start another, e.g.
# a hook calling autograd.grad, hence a stack). PyTorch's name for the same service is
# ``Variable._execution_engine.queue_callback``; DistributedDataParallel uses it to average
# gradients once every parameter's ``.grad`` is final, i.e. after the whole pass.
_final_callbacks = []


def queue_callback(fn):
    """Run ``fn()`` once the backward pass now running has finished.

    Valid only during a backward pass (call it from a Function's ``backward``); the
    callbacks run in the order queued, after every gradient has been accumulated.
    """
    if not _final_callbacks:
        raise RuntimeError("queue_callback: expected to be called during a backward pass "
                           "(from a Function's backward), but no backward pass is running")
    _final_callbacks[-1].append(fn)


# Post-accumulate-grad hooks (``Tensor.register_post_accumulate_grad_hook``). The leaves
# that have some, by id; weak, so a dropped parameter leaves no trace. While it is empty
# (the usual case) ``_propagate`` does no hook bookkeeping at all: a plain training step
# pays one dict test per backward pass.
_hooked_leaves = {}  # id(leaf) -> weakref.ref(leaf)
_hook_ids = itertools.count()


class _PostAccumulateHookHandle:
    """What ``register_post_accumulate_grad_hook`` returns: ``remove()`` unregisters the
    hook (a second call does nothing); usable as a context manager, as the module hooks'
    handle (``with t.register_post_accumulate_grad_hook(h): ...``)."""

    def __init__(self, tensor, hook):
        self.id = next(_hook_ids)
        self._tensor = weakref.ref(tensor)
        tensor._post_accumulate_hooks[self.id] = hook
        key = id(tensor)
        if key not in _hooked_leaves:
            def forget(ref, key=key):  # the tensor died: its id may be reused
                if _hooked_leaves.get(key) is ref:
                    del _hooked_leaves[key]
            _hooked_leaves[key] = weakref.ref(tensor, forget)

    def remove(self):
        tensor = self._tensor()
        if tensor is None or tensor._post_accumulate_hooks is None:
            return
        tensor._post_accumulate_hooks.pop(self.id, None)
        if not tensor._post_accumulate_hooks:
            _hooked_leaves.pop(id(tensor), None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def _fire_post_accumulate_hooks(leaf, create_graph):
    """Run ``leaf``'s post-accumulate hooks (in registration order), recording only when
    the pass itself records (create_graph), as PyTorch."""
    with (enable_grad() if create_graph else no_grad()):
        for hook in list(leaf._post_accumulate_hooks.values()):
            hook(leaf)


def _with_post_accumulate_hooks(order, roots, create_graph):
    """Yield the nodes of ``order`` one by one; once the backward loop is done with a node
    (run, or skipped because no gradient flows through it or it leads to no target), fire
    the hooks of every hooked leaf that this node was the last one to reach.

    A generator, so the backward loop itself is the same with hooks or without: its next
    ``next()`` comes after the node's gradients have been delivered. Each hooked leaf is
    counted once per edge from a node of the pass; skipped nodes count down too, so every
    leaf reached fires exactly once and never before its ``.grad`` is final.
    """
    pending = {}  # id(leaf) -> [leaf, edges from nodes still to come]
    for node in order:
        for edge in node._edges:
            if edge is not None and edge[1] is None and id(edge[0]) in _hooked_leaves:
                entry = pending.get(id(edge[0]))
                if entry is None:
                    entry = pending[id(edge[0])] = [edge[0], 0]
                entry[1] += 1
    for root in roots:  # backward() on a hooked leaf: the seed is its whole gradient
        if root.grad_fn is None and id(root) in _hooked_leaves and id(root) not in pending:
            _fire_post_accumulate_hooks(root, create_graph)
    for node in order:
        yield node
        for edge in node._edges:
            if edge is not None and edge[1] is None:
                entry = pending.get(id(edge[0]))
                if entry is not None:
                    entry[1] -= 1
                    if entry[1] == 0:
                        _fire_post_accumulate_hooks(entry[0], create_graph)


def _backward_pass(roots, seeds, retain_graph, create_graph, targets=None, into_grad=False):
    """``_propagate`` the seeds, then run the callbacks queued meanwhile (``queue_callback``)."""
    _final_callbacks.append([])
    try:
        out = _propagate(roots, seeds, retain_graph, create_graph, targets, into_grad)
        queue = _final_callbacks[-1]
        while queue:  # a callback may queue another one
            queue.pop(0)()
        return out
    finally:
        _final_callbacks.pop()


def _propagate(roots, seeds, retain_graph, create_graph, targets=None, into_grad=False):
    """Propagate ``seeds`` (one gradient per root) back through the graph.

    targets None (``backward()``): accumulate into the ``.grad`` of every leaf reached and
    of every tensor that called ``retain_grad()``, firing the leaves' post-accumulate hooks.
    targets, a list of Tensors (``autograd.grad``, ``backward(inputs=...)``): return the
    gradient reaching each of them (``None`` where none does), touching no ``.grad``;
    only the nodes that lead to a target run. With ``into_grad`` (``backward(inputs=...)``)
    add those gradients into the targets' ``.grad`` instead (then fire the hooks of the
    leaf targets reached), before the final callbacks run, and return None.
    """
    handed_out = {id(g) for g in seeds}
    captured = slots = None
    if targets is not None:
        captured = [None] * len(targets)
        slots = {}  # id(leaf) or (node, output_nr) -> indices into targets
        for k, t in enumerate(targets):
            key = id(t) if t.grad_fn is None else (t.grad_fn, t._output_nr)
            slots.setdefault(key, []).append(k)

    def deliver_leaf(t, g):
        if targets is None:
            _accumulate_leaf(t, g, handed_out)
        else:
            for k in slots.get(id(t), ()):
                _accumulate(captured, k, g)

    grads, starts = {}, []
    for root, g in zip(roots, seeds):
        if root.grad_fn is None:  # backward on a leaf: its gradient is the seed itself
            deliver_leaf(root, g)
            continue
        buf = grads.get(root.grad_fn)
        if buf is None:
            buf = grads[root.grad_fn] = [None] * len(root.grad_fn._out_meta)
            starts.append(root.grad_fn)
        _accumulate(buf, root._output_nr, g)

    order = _topological_order(starts)
    needed = _leading_to(order, targets) if targets is not None else None
    if _hooked_leaves and targets is None:  # no hooks anywhere: not one more step per node
        order = _with_post_accumulate_hooks(order, roots, create_graph)
    xp = backend.get_array_module(roots[0].data)
    for node in order:
        out_grads = grads.pop(node, None)
        if out_grads is None:  # no gradient flows through this node
            continue
        if node._released:
            node.saved_tensors  # raises the explanatory error
        if targets is None:
            for i, ref in (node._retained or {}).items():
                t = ref()
                if t is not None and out_grads[i] is not None:
                    g = out_grads[i]
                    if not create_graph:  # a copy: the array flows on to other nodes
                        g = Tensor(g.copy()) if t.grad is None else Tensor(t.grad.data + g)
                    elif t.grad is not None:
                        g = t.grad + g
                    t.grad = g
        else:
            for i, g in enumerate(out_grads):
                for k in slots.get((node, i), ()):
                    _accumulate(captured, k, g)
            if node not in needed:
                continue
        for i, g in enumerate(out_grads):
            if g is None:
                shape, dtype = node._out_meta[i]
                if dtype.kind in "fc":                          # integer outputs get None
                    z = xp.zeros(shape, dtype)
                    out_grads[i] = Tensor(z) if create_graph else z
        in_grads = _run_node(node, out_grads, create_graph)
        if not retain_graph:
            node._release()
        for edge, gi in zip(node._edges, in_grads):
            if edge is None or gi is None:
                continue
            target, nr = edge
            if nr is None:
                if tuple(gi.shape) != target.data.shape:
                    raise RuntimeError(f"{node.name}.backward: gradient of shape "
                                       f"{tuple(gi.shape)} for an input of shape {target.shape}")
                deliver_leaf(target, gi)
            else:
                buf = grads.get(target)
                if buf is None:
                    buf = grads[target] = [None] * len(target._out_meta)
                _accumulate(buf, nr, gi)
    if targets is None:
        return None
    out = []
    for t, g in zip(targets, captured):
        if g is not None and not isinstance(g, Tensor):
            g = Tensor(_owned(g.astype(t.dtype, copy=False), handed_out))
        elif g is not None and g.dtype != t.dtype:
            g = g.to(t.dtype)
        out.append(g)
    if into_grad:
        _add_into_grad(targets, out, create_graph, needed, roots)
        return None
    return out


def _add_into_grad(targets, grads, create_graph, needed, roots):
    """``backward(inputs=...)``: add each target's gradient into its ``.grad`` (leaf or
    not), then fire the post-accumulate hooks of the hooked leaves among the targets that
    the pass reached (a root, or the input of a node that had to run), as PyTorch."""
    for t, g in zip(targets, grads):
        if g is not None:
            if t.grad is not None:
                g = t.grad + g if create_graph else Tensor(t.grad.data + g.data)
            t.grad = g
    if not _hooked_leaves:
        return
    reached = {id(r) for r in roots if r.grad_fn is None}
    reached.update(id(e[0]) for node in needed for e in node._edges
                   if e is not None and e[1] is None)
    fired = set()
    for t in targets:
        if t.grad_fn is None and id(t) in _hooked_leaves and id(t) in reached \
                and id(t) not in fired:
            fired.add(id(t))
            _fire_post_accumulate_hooks(t, create_graph)


def run_backward(root, gradient=None, retain_graph=None, create_graph=False, inputs=None):
    """``root.backward(...)``: see ``Tensor.backward``."""
    if not root.requires_grad:
        raise RuntimeError("backward(): this tensor does not require grad and has no grad_fn "
                           "(did you compute it inside no_grad(), or from tensors that do not "
                           "require grad?)")
    if retain_graph is None:
        retain_graph = create_graph
    seed = _seed(root, gradient, create_graph)
    memory.mark_step()          # a training step's backward: times set_buffer_cache('auto')
    if inputs is None:
        _backward_pass([root], [seed], retain_graph, create_graph)
        return
    inputs = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    if not inputs:
        raise RuntimeError("backward(): inputs= was given but is empty")
    # accumulates into the inputs' .grad, leaf or not, before the final callbacks run
    _backward_pass([root], [seed], retain_graph, create_graph, inputs, into_grad=True)


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False,
         allow_unused=False, materialize_grads=False):
    """The gradients of ``outputs`` with respect to ``inputs``, returned, not accumulated.

    outputs: a Tensor or a sequence of them; inputs: likewise (leaves or not).
    grad_outputs: the upstream gradient per output (``None``: 1 for one-element outputs);
        the result is ``sum_k grad_outputs[k] . d outputs[k] / d inputs[i]``.
    retain_graph: keep the graph's saved values (defaults to ``create_graph``).
    create_graph: record the backward too, so the gradients can be differentiated again
        (``grad(grad(y, x, create_graph=True)[0].sum(), x)`` is a second derivative).
    allow_unused: return ``None`` for an input no output depends on, instead of raising;
        ``materialize_grads=True`` returns zeros there instead.
    Returns a tuple with one gradient per input. No ``.grad`` is touched (PyTorch's
    ``torch.autograd.grad``).
    """
    outputs = (outputs,) if isinstance(outputs, Tensor) else tuple(outputs)
    inputs = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    if grad_outputs is None or isinstance(grad_outputs, Tensor):
        grad_outputs = (grad_outputs,) * len(outputs) if grad_outputs is None else (grad_outputs,)
    grad_outputs = tuple(grad_outputs)
    if len(grad_outputs) != len(outputs):
        raise RuntimeError(f"grad(): {len(grad_outputs)} grad_outputs for {len(outputs)} "
                           "outputs; give one per output (None for a one-element output)")
    for k, y in enumerate(outputs):
        if not y.requires_grad:
            raise RuntimeError(f"grad(): output {k} (shape {y.shape}) does not require grad "
                               "and has no grad_fn: nothing connects it to the inputs")
    for i, x in enumerate(inputs):
        if not x.requires_grad:
            raise RuntimeError(f"grad(): input {i} (shape {x.shape}) does not require grad; "
                               "create it with requires_grad=True")
    if retain_graph is None:
        retain_graph = create_graph
    seeds = [_seed(y, g, create_graph) for y, g in zip(outputs, grad_outputs)]
    result = _backward_pass(list(outputs), seeds, retain_graph, create_graph, list(inputs))
    for i, (x, g) in enumerate(zip(inputs, result)):
        if g is None:
            if materialize_grads:
                result[i] = Tensor(backend.get_array_module(x.data).zeros_like(x.data))
            elif not allow_unused:
                raise RuntimeError(
                    f"grad(): input {i} (shape {x.shape}) was not used to compute the "
                    "outputs, so it has no gradient; pass allow_unused=True to get None "
                    "(or materialize_grads=True to get zeros)")
    return tuple(result)


# ----------------------------------------------------------------------------- casts and moves
# They live here rather than in ops/ because Tensor.to() needs them; ``to`` calls the two
# functions below (module functions, not methods attached to Tensor after the class).


class CastFunction(Function):
    @staticmethod
    def forward(ctx, x, dtype):
        ctx.in_dtype = x.dtype
        return x.astype(dtype)

    @staticmethod
    def backward(ctx, gy):
        return gy.astype(ctx.in_dtype)

    @staticmethod
    def differentiable_backward(ctx, gy):
        return _cast(gy, ctx.in_dtype)


class MoveFunction(Function):
    @staticmethod
    def forward(ctx, x, device):
        ctx.in_device = backend.device_of(x)
        return backend.to_device(x, device)

    @staticmethod
    def backward(ctx, gy):
        return backend.to_device(gy, ctx.in_device)

    @staticmethod
    def differentiable_backward(ctx, gy):
        return _move(gy, ctx.in_device)


def _cast(x, dtype):
    """``x`` as ``dtype``, differentiable (the gradient is cast back)."""
    if x.requires_grad and dtype.kind not in "fc":
        return Tensor(x.data.astype(dtype))  # integer results carry no gradient
    return CastFunction.apply(x, dtype=dtype)


def _move(x, device):
    """``x`` on ``device``, differentiable (the gradient moves back)."""
    return MoveFunction.apply(x, device=device)

