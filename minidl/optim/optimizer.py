"""``Optimizer``: the base class holding parameter groups and per-parameter state.

``param_groups`` is a list of dicts, each with a ``'params'`` list and that group's options
(``lr``, ``momentum``...; options not given in a group take the optimiser's defaults).
``state[p]`` is a dict of per-parameter buffers (a momentum buffer, Adam's moments).

Update rules never modify ``p.grad`` (a gradient array may be shared); they update
``p.data`` in place, so the Parameter objects (and anything holding them) stay valid.
"""
from __future__ import annotations

import copy
from collections import defaultdict

from .. import backend
from ..autograd import Tensor, enable_grad


class _RequiredParameter:
    def __repr__(self):
        return "<required parameter>"


required = _RequiredParameter()


class Optimizer:
    """Base class: subclasses implement ``step()`` using ``param_groups`` and ``state``."""

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        if isinstance(params, Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of "
                            f"Tensors or dicts, but got a Tensor of shape {params.shape}")
        self.state = defaultdict(dict)
        self.param_groups = []
        param_groups = list(params)
        if not param_groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(param_groups[0], dict):
            param_groups = [{"params": param_groups}]
        for group in param_groups:
            self.add_param_group(group)

    def __repr__(self):
        s = type(self).__name__ + " ("
        for i, group in enumerate(self.param_groups):
            s += f"\nParameter Group {i}"
            for key in sorted(group):
                if key != "params":
                    s += f"\n    {key}: {group[key]}"
        return s + "\n)"

    def add_param_group(self, param_group):
        """Add a group (a dict with ``'params'`` and optional per-group options)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        group = dict(param_group)
        params = group["params"]
        if isinstance(params, Tensor):
            group["params"] = [params]
        elif isinstance(params, set):
            raise TypeError("optimizer parameters need to be organized in ordered collections, "
                            "but the ordering of tensors in sets will change between runs. "
                            "Please use a list instead.")
        else:
            group["params"] = list(params)
        for p in group["params"]:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, but one of the params "
                                f"is {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError("can't optimize a non-leaf Tensor")
        for name, default in self.defaults.items():
            if default is required and name not in group:
                raise ValueError(f"parameter group didn't specify a value of required "
                                 f"optimization parameter {name}")
            group.setdefault(name, default)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if len({id(p) for p in group["params"]}) != len(group["params"]):
            raise ValueError("optimizer contains a parameter group with duplicate parameters")
        if any(id(p) in seen for p in group["params"]):
            raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append(group)

    def zero_grad(self, set_to_none=True):
        """Reset gradients: to None (default), or to fresh zero arrays (never in place)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    xp = backend.get_array_module(p.grad.data)
                    p.grad = Tensor(xp.zeros_like(p.grad.data))

    def step(self, closure=None):
        raise NotImplementedError

    def _state(self, p, *zeros, **initial):
        """``self.state[p]``, made on first use: ``step`` 0, the ``initial`` values, then a
        zero Tensor like p for each name in ``zeros`` (the running averages of the Adam-like
        optimisers)."""
        state = self.state[p]
        if not state:
            state["step"] = 0
            state.update(initial)
            xp = backend.get_array_module(p.data)
            for name in zeros:
                state[name] = Tensor(xp.zeros_like(p.data))
        return state

    @staticmethod
    def _gradients(group, negate=True):
        """``(p, g)`` for each parameter of ``group`` that has a gradient: ``g`` its gradient
        array (checked, never to be modified in place), negated when the group maximizes
        (``negate=False``: never; for an update kernel that applies ``maximize`` itself)."""
        negate = negate and group["maximize"]
        for p in group["params"]:
            if p.grad is None:
                continue
            g = _check_grad(p)
            yield p, (-g if negate else g)

    def _closure_loss(self, closure):
        if closure is None:
            return None
        with enable_grad():
            return closure()

    # ----------------------------------------------------------------- state dict
    def state_dict(self):
        """``{'state': {index: {...}}, 'param_groups': [{options..., 'params': [index...]}]}``:
        parameters are replaced by their position across all groups (PyTorch's layout).
        The state Tensors are the live ones (save or deep-copy to snapshot)."""
        index_of, groups, start = {}, [], 0
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            ids = list(range(start, start + len(group["params"])))
            for i, p in zip(ids, group["params"]):
                index_of.setdefault(id(p), i)
            packed["params"] = ids
            groups.append(packed)
            start += len(ids)
        state = {index_of[id(p)]: v for p, v in self.state.items() if id(p) in index_of}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore options and per-parameter state from ``state_dict()``'s output. Tensors
        are copied to each parameter's device (and floating state to its dtype)."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"loaded state dict has a different number of parameter groups "
                             f"({len(saved_groups)}) than the optimizer ({len(self.param_groups)})")
        for i, (g, sg) in enumerate(zip(self.param_groups, saved_groups)):
            if len(g["params"]) != len(sg["params"]):
                raise ValueError(f"loaded state dict contains a parameter group that doesn't "
                                 f"match the size of optimizer's group: group {i} has "
                                 f"{len(sg['params'])} parameters in the state dict and "
                                 f"{len(g['params'])} in the optimizer")
        id_map = {}
        for g, sg in zip(self.param_groups, saved_groups):
            for p, idx in zip(g["params"], sg["params"]):
                id_map[idx] = p

        def cast(param, key, value):
            if key == "step" and isinstance(value, Tensor):  # a step counter, kept a number
                return value.item()
            if isinstance(value, Tensor):
                arr = backend.to_device(value.data, param.device)
                if key != "step" and arr.dtype.kind in "fc":
                    arr = arr.astype(param.dtype, copy=False)
                xp = backend.get_array_module(arr)
                return Tensor(xp.array(arr, copy=True))
            if isinstance(value, dict):
                return {k: cast(param, k, v) for k, v in value.items()}
            return copy.deepcopy(value)

        state = defaultdict(dict)
        for k, v in state_dict["state"].items():
            key = int(k) if isinstance(k, str) and k.isdigit() else k
            if key in id_map:
                p = id_map[key]
                state[p] = {name: cast(p, name, val) for name, val in v.items()}
        new_groups = []
        for g, sg in zip(self.param_groups, saved_groups):
            ng = {k: copy.deepcopy(v) for k, v in sg.items() if k != "params"}
            if isinstance(ng.get("betas"), list):
                ng["betas"] = tuple(ng["betas"])
            ng["params"] = g["params"]
            new_groups.append(ng)
        self.state = state
        self.param_groups = new_groups


def _state_array(t, p):
    """The array of state tensor ``t`` on ``p``'s device and dtype. After ``Module.to()``
    moved or cast the parameters, the buffers follow on the next step (in place in ``t``)."""
    a = t.data
    if a.dtype != p.data.dtype or backend.device_of(a) != p.device:
        a = backend.to_device(a.astype(p.data.dtype, copy=False), p.device)
        t.data = a
    return a


_OPTION_NAMES = {"lr": "learning rate", "eps": "epsilon value"}


def check_nonnegative(**options):
    """Refuse a negative hyper-parameter with PyTorch's message ("Invalid learning rate: -1",
    "Invalid weight_decay value: -0.1"), checked in the order given."""
    for name, value in options.items():
        if value < 0.0:
            raise ValueError(f"Invalid {_OPTION_NAMES.get(name, name + ' value')}: {value}")


def check_betas(betas):
    """Each beta in [0, 1), PyTorch's message naming its index."""
    for i, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {beta}")


def _check_grad(p):
    """The gradient array of ``p`` on ``p``'s device and dtype (never modified in place)."""
    g = p.grad.data
    if g.shape != p.data.shape:
        raise RuntimeError(f"optimizer: gradient of shape {tuple(g.shape)} for a parameter of "
                           f"shape {p.shape}")
    return g


__all__ = ["Optimizer", "required"]
