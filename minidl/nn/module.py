"""``Module``: the base class of layers and models.

A Module owns three ordered registries, filled by plain attribute assignment:

- ``_parameters``: ``Parameter`` objects (``self.weight = Parameter(...)``), learnable;
- ``_buffers``: non-learnable state Tensors (``self.register_buffer('running_mean', t)``),
  saved in ``state_dict()`` unless registered with ``persistent=False``;
- ``_modules``: sub-modules (``self.conv1 = Conv2d(...)``).

Names nest with dots, as in PyTorch: ``conv1.weight``, ``features.0.bias``,
``bn.running_mean``, ``bn.num_batches_tracked``.

Calling a module (``net(x)``) runs its forward pre-hooks, ``forward``, then its forward
hooks. A tool that must answer calls in place of ``forward`` (``minidl.summary`` answers
each known layer with its output shape, running no convolution) does so through the public
``intercept_calls`` context manager, never by replacing ``forward`` on instances.
"""
from __future__ import annotations

import contextlib
import itertools
from collections import OrderedDict, namedtuple

import numpy as np

from .. import backend
from ..autograd import Tensor, no_grad, parse_to_args
from .parameter import Parameter

_IncompatibleKeysBase = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class _IncompatibleKeys(_IncompatibleKeysBase):
    """What ``load_state_dict(strict=False)`` returns: the keys that were missing / unexpected."""

    def __repr__(self):
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"
        return super().__repr__()

    __str__ = __repr__


class RemovableHandle:
    """Returned by ``register_forward_hook`` and friends; ``handle.remove()`` unregisters."""

    _next_id = itertools.count()

    def __init__(self, hooks_dict):
        self.id = next(RemovableHandle._next_id)
        self._hooks = hooks_dict

    def remove(self):
        self._hooks.pop(self.id, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def _addindent(s, num_spaces):
    """Indent every line but the first by ``num_spaces`` (PyTorch's repr helper)."""
    lines = s.split("\n")
    if len(lines) == 1:
        return s
    first = lines.pop(0)
    lines = [(num_spaces * " ") + line if line.strip() else "" for line in lines]
    return first + "\n" + "\n".join(lines)


def _check_name(op, kind, name):
    """A registry name must be a non-empty string without dots (dots join nested names).
    op: who is registering (``Net.register_buffer``), the messages' prefix."""
    if not isinstance(name, str):
        raise TypeError(f"{op}: {kind} name should be a string, got {type(name).__name__}")
    if name == "":
        raise KeyError(f'{op}: {kind} name can\'t be empty string ""')
    if "." in name:
        raise KeyError(f'{op}: {kind} name can\'t contain ".", got: {name}')


def _value_array(value, key):
    """The raw array inside a state_dict value (Tensor, NumPy/CuPy array or number)."""
    if isinstance(value, Tensor):
        return value.data
    if backend.is_cupy_array(value):
        return value
    if isinstance(value, (np.ndarray, np.generic, int, float, bool)):
        arr = np.asarray(value)
        if arr.dtype.kind not in "biufc":  # "1e5" strings must not become weights
            raise TypeError(f"load_state_dict: the value for key '{key}' has dtype "
                            f"{arr.dtype}; expected numbers (a numeric or bool array)")
        return arr
    raise TypeError(f"load_state_dict: the value for key '{key}' is a {type(value).__name__}; "
                    "expected a Tensor or an array")


# The interceptor installed by ``intercept_calls`` (None: calls run ``forward``). A
# module-level variable, so the normal path of ``Module.__call__`` pays one ``is None`` check.
_call_interceptor = None


@contextlib.contextmanager
def intercept_calls(fn):
    """Within the ``with`` block, ``fn(module, args, kwargs)`` answers every module call.

    ``fn`` is asked in place of ``module.forward(*args, **kwargs)``, after the module's
    forward pre-hooks and before its forward hooks (which see the answer as the output).
    It returns the output, or ``NotImplemented`` to let ``forward`` run as usual; it may
    itself call ``module.forward(*args, **kwargs)`` to run the real forward around its own
    bookkeeping (``minidl.summary`` does both: a known layer is answered by its shape rule,
    a container runs its real ``forward``, whose inner calls come back to ``fn``).

    It applies to every module in the process while the block runs (one interceptor at a
    time: an inner ``intercept_calls`` replaces an outer one until it exits)::

        calls = []
        def count(module, args, kwargs):
            calls.append(type(module).__name__)
            return NotImplemented
        with nn.intercept_calls(count):
            net(x)
    """
    if not callable(fn):
        raise TypeError(f"intercept_calls: fn must be callable, got {type(fn).__name__}")
    global _call_interceptor
    previous = _call_interceptor
    _call_interceptor = fn
    try:
        yield fn
    finally:
        _call_interceptor = previous


class Module:
    """Base class of every layer and model: subclass it, assign layers in ``__init__``, and
    write ``forward``; call the module (``net(x)``) rather than ``forward`` so hooks run."""

    training: bool

    def __init__(self, *args, **kwargs):
        if args or kwargs:
            raise TypeError(f"{type(self).__name__}.__init__() got unexpected arguments; "
                            "Module.__init__ takes none")
        d = self.__dict__
        d["training"] = True
        d["_parameters"] = OrderedDict()
        d["_buffers"] = OrderedDict()
        d["_non_persistent_buffers_set"] = set()
        d["_modules"] = OrderedDict()
        d["_forward_pre_hooks"] = OrderedDict()
        d["_forward_hooks"] = OrderedDict()

    # ------------------------------------------------------------------ forward / call
    def forward(self, *args, **kwargs):
        raise NotImplementedError(
            f'Module [{type(self).__name__}] is missing the required "forward" function')

    def __call__(self, *args, **kwargs):
        if not (self._forward_pre_hooks or self._forward_hooks) and _call_interceptor is None:
            return self.forward(*args, **kwargs)     # the common case, kept short
        for hook in list(self._forward_pre_hooks.values()):
            result = hook(self, args)
            if result is not None:
                args = result if isinstance(result, tuple) else (result,)
        if _call_interceptor is None:
            out = self.forward(*args, **kwargs)
        else:  # a tool answers calls (see intercept_calls), or passes with NotImplemented
            out = _call_interceptor(self, args, kwargs)
            if out is NotImplemented:
                out = self.forward(*args, **kwargs)
        for hook in list(self._forward_hooks.values()):
            result = hook(self, args, out)
            if result is not None:
                out = result
        return out

    def register_forward_pre_hook(self, hook):
        """``hook(module, args) -> None or new args`` runs before every ``forward``."""
        handle = RemovableHandle(self._forward_pre_hooks)
        self._forward_pre_hooks[handle.id] = hook
        return handle

    def register_forward_hook(self, hook):
        """``hook(module, args, output) -> None or new output`` runs after every ``forward``."""
        handle = RemovableHandle(self._forward_hooks)
        self._forward_hooks[handle.id] = hook
        return handle

    # ------------------------------------------------------------------ registration
    def register_parameter(self, name, param):
        """Add ``param`` (a Parameter, or None for an absent one like ``bias=False``)."""
        op = f"{type(self).__name__}.register_parameter"
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{op}: cannot assign parameter before Module.__init__() "
                                 "call")
        _check_name(op, "parameter", name)
        if hasattr(self, name) and name not in self._parameters:
            raise KeyError(f"{op}: attribute '{name}' already exists")
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"{op}: cannot assign '{type(param).__name__}' object to parameter "
                            f"'{name}' (minidl.nn.Parameter or None required)")
        if param is not None and not param.is_leaf:
            raise ValueError(f"{op}: cannot assign non-leaf Tensor to parameter '{name}'; wrap "
                             "a detached tensor: Parameter(t.detach())")
        self._parameters[name] = param

    def register_buffer(self, name, tensor, persistent=True):
        """Add a non-learnable state Tensor (or None); ``persistent=False`` keeps it out of
        ``state_dict()``. Buffers move and cast with the module in ``to()``."""
        op = f"{type(self).__name__}.register_buffer"
        if "_buffers" not in self.__dict__:
            raise AttributeError(f"{op}: cannot assign buffer before Module.__init__() call")
        _check_name(op, "buffer", name)
        if hasattr(self, name) and name not in self._buffers:
            raise KeyError(f"{op}: attribute '{name}' already exists")
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"{op}: cannot assign '{type(tensor).__name__}' object to buffer "
                            f"'{name}' (minidl Tensor or None required)")
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent_buffers_set.discard(name)
        else:
            self._non_persistent_buffers_set.add(name)

    def add_module(self, name, module):
        """Register ``module`` as the child ``name`` (same as ``setattr(self, name, module)``)."""
        op = f"{type(self).__name__}.add_module"
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{op}: {type(module).__name__} is not a Module subclass")
        _check_name(op, "module", name)
        if hasattr(self, name) and name not in self._modules:
            raise KeyError(f"{op}: attribute '{name}' already exists")
        self._modules[name] = module

    register_module = add_module

    def _remove_from(self, name, keep=None):
        """Forget ``name`` everywhere but in ``keep``: a child or parameter assigned again
        under its own name keeps its place in that dict (a Sequential's order), as in PyTorch."""
        for d in (self.__dict__, self._parameters, self._buffers, self._modules):
            if d is not keep:
                d.pop(name, None)
        self._non_persistent_buffers_set.discard(name)

    def __setattr__(self, name, value):
        params = self.__dict__.get("_parameters")
        if isinstance(value, Parameter):
            if params is None:
                raise AttributeError(f"{type(self).__name__}: cannot assign parameters before "
                                     "Module.__init__() call")
            self._remove_from(name, keep=params)
            self.register_parameter(name, value)
            return
        if params is not None and name in params:
            if value is not None:
                raise TypeError(f"{type(self).__name__}: cannot assign '{type(value).__name__}' "
                                f"as parameter '{name}' (minidl.nn.Parameter or None expected)")
            params[name] = None
            return
        modules = self.__dict__.get("_modules")
        if isinstance(value, Module):
            if modules is None:
                raise AttributeError(f"{type(self).__name__}: cannot assign module before "
                                     "Module.__init__() call")
            self._remove_from(name, keep=modules)
            modules[name] = value
            return
        if modules is not None and name in modules:
            if value is not None:
                raise TypeError(f"{type(self).__name__}: cannot assign '{type(value).__name__}' "
                                f"as child module '{name}' (minidl.nn.Module or None expected)")
            modules[name] = None
            return
        buffers = self.__dict__.get("_buffers")
        if buffers is not None and name in buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"{type(self).__name__}: cannot assign '{type(value).__name__}' "
                                f"as buffer '{name}' (minidl Tensor or None expected)")
            buffers[name] = value
            return
        object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # Only called when normal lookup fails: look in the registries.
        d = self.__dict__
        for registry in ("_parameters", "_buffers", "_modules"):
            reg = d.get(registry)
            if reg is not None and name in reg:
                return reg[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name):
        if name in self._parameters:
            del self._parameters[name]
        elif name in self._buffers:
            del self._buffers[name]
            self._non_persistent_buffers_set.discard(name)
        elif name in self._modules:
            del self._modules[name]
        else:
            object.__delattr__(self, name)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._buffers)
                      | set(self._modules))

    # ------------------------------------------------------------------ traversal
    def _named_members(self, get_members, prefix="", recurse=True, remove_duplicate=True):
        memo = set()
        modules = (self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate)
                   if recurse else [(prefix, self)])
        for module_prefix, module in modules:
            for k, v in get_members(module):
                if v is None or (remove_duplicate and id(v) in memo):
                    continue
                if remove_duplicate:
                    memo.add(id(v))
                yield module_prefix + ("." if module_prefix else "") + k, v

    def named_parameters(self, prefix="", recurse=True, remove_duplicate=True):
        """``(name, Parameter)`` pairs, nested names joined by dots; shared ones once."""
        yield from self._named_members(lambda m: m._parameters.items(), prefix, recurse,
                                       remove_duplicate)

    def parameters(self, recurse=True):
        """Every Parameter of this module (and its sub-modules when ``recurse``), once each."""
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix="", recurse=True, remove_duplicate=True):
        yield from self._named_members(lambda m: m._buffers.items(), prefix, recurse,
                                       remove_duplicate)

    def buffers(self, recurse=True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def named_children(self):
        memo = set()
        for name, module in self._modules.items():
            if module is not None and id(module) not in memo:
                memo.add(id(module))
                yield name, module

    def children(self):
        for _, m in self.named_children():
            yield m

    def named_modules(self, memo=None, prefix="", remove_duplicate=True):
        """``(name, module)`` for this module (name ``prefix``, '' by default) and every
        descendant, depth first in registration order."""
        if memo is None:
            memo = set()
        if id(self) in memo:
            return
        if remove_duplicate:
            memo.add(id(self))
        yield prefix, self
        for name, module in self._modules.items():
            if module is None:
                continue
            sub = prefix + ("." if prefix else "") + name
            yield from module.named_modules(memo, sub, remove_duplicate)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def get_submodule(self, target):
        """The sub-module at dotted path ``target`` ('' is the module itself)."""
        if target == "":
            return self
        mod = self
        for item in target.split("."):
            if item not in mod._modules or mod._modules[item] is None:
                raise AttributeError(f"{mod._get_name()} has no submodule `{item}` "
                                     f"(looking up '{target}')")
            mod = mod._modules[item]
        return mod

    def apply(self, fn):
        """Call ``fn(m)`` on every sub-module (children first) and then on self; returns self."""
        for module in self.children():
            module.apply(fn)
        fn(self)
        return self

    # ------------------------------------------------------------------ modes and grads
    def train(self, mode=True):
        """Set training mode (``mode=True``) or evaluation mode on this module and every
        descendant (Dropout and BatchNorm behave differently); returns self."""
        if not isinstance(mode, bool):
            raise ValueError(f"{type(self).__name__}.train: training mode is expected to be "
                             f"boolean, got {mode!r}")
        self.training = mode
        for module in self.children():
            module.train(mode)
        return self

    def eval(self):
        """``train(False)``: Dropout off, BatchNorm uses its running statistics."""
        return self.train(False)

    def requires_grad_(self, requires_grad=True):
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none=True):
        """Reset every parameter's gradient: to None (default) or to a fresh zero tensor."""
        for p in self.parameters():
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:  # a new array: a gradient array may be shared, never zero it in place
                xp = backend.get_array_module(p.grad.data)
                p.grad = Tensor(xp.zeros_like(p.grad.data))

    # ------------------------------------------------------------------ devices and dtypes
    def _apply(self, fn):
        """Replace the array of every parameter, gradient and buffer by ``fn(array)``,
        keeping the Parameter and buffer objects (so optimisers holding them stay valid)."""
        with no_grad():
            for module in self.modules():
                for p in module._parameters.values():
                    if p is None:
                        continue
                    p.data = fn(p.data)
                    if p.grad is not None:
                        p.grad = Tensor(fn(p.grad.data))
                for b in module._buffers.values():
                    if b is not None:
                        b.data = fn(b.data)
        return self

    def to(self, *args, **kwargs):
        """Move and/or cast parameters and buffers in place, returning self.

        ``to('cuda')``, ``to(minidl.float64)``, ``to('cpu', minidl.float32)``,
        ``to(device=..., dtype=...)``, ``to(tensor)`` (its device and dtype). Only floating
        point parameters/buffers are cast (``num_batches_tracked`` stays int64).
        """
        device, dtype = parse_to_args(args, kwargs)
        if dtype is not None and dtype.kind not in "fc":
            raise TypeError(f"{type(self).__name__}.to: only floating point dtypes are "
                            f"accepted, but got desired "
                            f"dtype={dtype}")

        def convert(a):
            if dtype is not None and a.dtype.kind in "fc" and a.dtype != dtype:
                a = a.astype(dtype)
            if device is not None and backend.device_of(a) != device:
                a = backend.to_device(a, device)
            return a

        return self._apply(convert)

    def cuda(self, device=None):
        return self.to("cuda" if device is None else f"cuda:{device}")

    def cpu(self):
        return self.to("cpu")

    def float(self):
        return self.to(np.float32)

    def double(self):
        return self.to(np.float64)

    def half(self):
        return self.to(np.float16)

    # ------------------------------------------------------------------ state dict
    def _state_entries(self):
        """``(key, tensor)`` for every parameter and persistent buffer, dotted keys, in
        ``state_dict()`` order: the one walk that ``state_dict`` and ``load_state_dict``
        share. A module reached twice (shared) is listed under each of its names."""
        for module_prefix, module in self.named_modules(remove_duplicate=False):
            pre = module_prefix + "." if module_prefix else ""
            for name, p in module._parameters.items():
                if p is not None:
                    yield pre + name, p
            for name, b in module._buffers.items():
                if b is not None and name not in module._non_persistent_buffers_set:
                    yield pre + name, b

    def state_dict(self, destination=None, prefix="", keep_vars=False):
        """An ordered dict from dotted names to Tensors: every parameter and persistent
        buffer. The Tensors share memory with the module (save or copy them to snapshot);
        ``keep_vars=True`` returns the Parameter and buffer objects themselves."""
        if destination is None:
            destination = OrderedDict()
        for key, t in self._state_entries():
            destination[prefix + key] = t if keep_vars else Tensor(t.data)
        return destination

    def load_state_dict(self, state_dict, strict=True):
        """Copy values from ``state_dict`` into the parameters and buffers, in place.

        Every key and shape is checked before anything is copied, so a failed load leaves
        the module unchanged. Size mismatches always raise; missing and unexpected keys
        raise when ``strict`` (the default), else they are returned as
        ``(missing_keys, unexpected_keys)``. Values are cast to the parameter's dtype and
        moved to its device.
        """
        if not hasattr(state_dict, "keys") or not hasattr(state_dict, "__getitem__"):
            raise TypeError(f"{type(self).__name__}.load_state_dict: expected state_dict to "
                            "be dict-like, got "
                            f"{type(state_dict).__name__}.")
        entries = list(self._state_entries())
        expected = {k for k, _ in entries}
        missing, mismatched, plan = [], [], []
        for key, target in entries:
            if key not in state_dict:
                missing.append(key)
                continue
            arr = _value_array(state_dict[key], key)
            if tuple(arr.shape) != target.shape:
                mismatched.append(
                    f"size mismatch for {key}: copying a param with shape {tuple(arr.shape)} "
                    f"from checkpoint, the shape in current model is {target.shape}.")
                continue
            plan.append((target, arr))
        unexpected = [k for k in state_dict.keys() if k not in expected]
        errors = []
        if strict:
            if unexpected:
                errors.append("Unexpected key(s) in state_dict: "
                              + ", ".join(f'"{k}"' for k in unexpected) + ". ")
            if missing:
                errors.append("Missing key(s) in state_dict: "
                              + ", ".join(f'"{k}"' for k in missing) + ". ")
        errors.extend(mismatched)
        if errors:
            raise RuntimeError(f"Error(s) in loading state_dict for {self._get_name()}:\n\t"
                               + "\n\t".join(errors))
        with no_grad():
            for target, arr in plan:
                arr = backend.to_device(arr, target.device)
                target.data[...] = arr.astype(target.dtype, copy=False)
                target._bump_version()
        return _IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------------ repr
    def _get_name(self):
        return type(self).__name__

    def extra_repr(self):
        """The layer's settings shown inside its repr (``in_features=4, ...``)."""
        return ""

    def __repr__(self):
        extra_lines = []
        extra = self.extra_repr()
        if extra:
            extra_lines = extra.split("\n")
        child_lines = []
        for key, module in self._modules.items():
            child_lines.append("(" + key + "): " + _addindent(repr(module), 2))
        lines = extra_lines + child_lines
        main = self._get_name() + "("
        if lines:
            if len(extra_lines) == 1 and not child_lines:
                main += extra_lines[0]
            else:
                main += "\n  " + "\n  ".join(lines) + "\n"
        return main + ")"
