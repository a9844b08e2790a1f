"""``minidl.summary(model, input_size)``: a layer-by-layer table of output shapes,
parameters, multiply-adds, FLOPs and memory, in the spirit of torchsummary / torchinfo,
computed by shape propagation (no convolution or matrix product is run).

How it works
------------
While ``summary`` runs, it answers the model's module calls through the public hook
``nn.intercept_calls``. A leaf layer minidl knows (``Conv2d``, ``Linear``, ``BatchNorm``,
the poolings, activations, ``Dropout``, ``Flatten``, ``Identity``...) is answered by its
shape rule: it checks the input shape as the layer would, computes the output shape (with
``minidl.geometry``, the formulas the ops use) and the layer's costs, and returns a
placeholder tensor of that shape whose array is a single zero broadcast to the shape (zero
strides, no memory). Containers run their own ``forward`` unchanged around them, so
whatever the model does between layers (``cat`` of Inception branches, residual ``+``,
``flatten``/``reshape``, functional ``F.relu``) runs for real on those placeholders, which
costs next to nothing (elementwise work on one sample's activations at most). Summarising
ResNet-152 at 224x224 takes a fraction of a second; a mismatch (e.g. Inception branches of
different sizes) raises the same error the real forward would.

Leaf layers minidl does not know run their real ``forward`` on the placeholders; their
output shape is exact but their FLOPs are shown as ``?`` and left out of the totals.

Counting conventions (also printed in the table's header)
---------------------------------------------------------
- **MACs** (multiply-accumulates) are the products of a layer's weights with its inputs,
  counted for ``Conv2d``, ``ConvTranspose2d`` and ``Linear`` only:
  conv: ``N * OC * OH * OW * (C / groups) * KH * KW``; transposed conv:
  ``N * C * H * W * (OC / groups) * KH * KW``; linear: ``rows * IN * OUT``.
  This is what papers usually call "FLOPs" (ResNet's 1.8 x 10^9 ... 11.3 x 10^9 are MACs).
- **FLOPs**: **1 MAC = 2 FLOPs** (one multiply, one add), **plus one FLOP per bias add**
  (``N * OC * OH * OW`` for a conv, ``rows * OUT`` for a linear): the lecture's
  convention (a perceptron with 3 inputs: 3 MACs = 6 FLOPs + 1 bias = 7 FLOPs).
  Other layers count their elementwise work, one FLOP per add, multiply, division or
  comparison: ReLU / ReLU6 / LeakyReLU / tanh / sigmoid / GELU 1 per element (a
  transcendental counts as one); BatchNorm 2 per element (normalise and affine folded
  into y = x * a + b; training-mode batch statistics not counted); softmax 3 per
  element; max pooling KH*KW - 1 comparisons per output; average pooling KH*KW per
  output (adds and one division; adaptive pools: the window sizes); Dropout 1 per element
  in training, 0 in eval; Flatten / Identity 0.
  LayerNorm / LayerNorm2d / GroupNorm 5 per element (statistics and normalisation, at
  inference too) + 2 with an affine; Hardsigmoid 1; StochasticDepth as Dropout; Permute 0.
- **Output bytes**: the layer's output, ``numel * itemsize``.
- **im2col bytes** (convolutions): the unfolded input matrix minidl's conv builds,
  ``C * KH * KW * N * OH * OW * itemsize`` (``(C/groups * KH * KW) x (N * OH * OW)`` per
  group).
- **Totals**: parameters of the whole model (each shared parameter once; trainable =
  ``requires_grad``); MACs and FLOPs summed over the layers that ran; activation memory
  = the sum of the layers' output bytes, i.e. the activations a training step keeps for
  the backward pass (what is computed between layers, such as ``cat`` or ``+``, is not
  included).

Receptive fields
----------------
Every row also carries the receptive field of its output, per axis (height, width): its
**size** (input pixels one output unit sees), its **jump** (the input-pixel distance
between two neighbouring outputs) and its **start** (the centre of the first output's
field, in input pixel coordinates: pixel ``i`` has its centre at ``i``). A layer with
kernel ``k``, stride ``s``, padding ``p`` (the top/left one) and dilation ``d`` maps the
field of its input to::

    jump_out  = jump_in * s
    size_out  = size_in + d * (k - 1) * jump_in
    start_out = start_in + (d * (k - 1) / 2 - p) * jump_in

(convolutions, max and average pooling; an adaptive pooling uses its largest window and
its mean stride, so a global pooling sees the whole field of its input). Layers that
keep the spatial shape (BatchNorm, activations, Dropout...) keep the field.

What happens *between* modules (a residual ``out + identity``, the ``cat`` of Inception
branches, ``F.relu``) has no rule, so the field is found from the autograd graph: the
placeholders require grad and the propagation records, so a tensor that no rule made
has a ``grad_fn`` whose ``next_functions`` lead back to the placeholders the rules made
(each is in a side table, placeholder id -> field). Its field is the largest of its
inputs' fields, per axis: a sum or a concatenation sees what each of its inputs sees,
and the larger field contains the smaller one (for Inception: the largest branch; for a
residual block: the longer path). An op between modules that changes the height or
width (``F.adaptive_avg_pool2d``, ``flatten``) gives no field. A leaf layer without a
rule runs for real, so the same graph walk gives it its input's field when it keeps the
spatial shape (right for an activation, not for a layer that mixes pixels), none
otherwise. ``ConvTranspose2d`` gives no field (a fractional jump).

``ModelSummary.receptive_field`` is the field size of the last module call that ends
with a spatial field, not counting global poolings (those see the whole input by
definition): for ResNet, its last block; for VGG, its last pooling.

The table lists every module call in call order, indented by depth (a module called
twice, like the lecture's LeNet ``max_pool``, has two rows; its parameters count once).
Container rows show ``--``, or, at the ``depth`` cut-off, the totals of their layers.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from . import geometry, nn
from .autograd import Tensor, enable_grad
from .errors import ShapeError

__all__ = ["summary", "ModelSummary", "LayerSummary", "ReceptiveField",
           "register_layer_rule"]


# ----------------------------------------------------------------------------- results


@dataclass
class LayerSummary:
    """One module call.

    ``params`` are the module's own parameters for a leaf layer (0 on a second call of
    the same module), or all its parameters for a container; ``macs``, ``flops``,
    ``output_bytes`` and ``im2col_bytes`` of a container are the sums over its layers in
    this call. ``flops`` is None for a leaf layer whose cost is not known.
    ``receptive_field``, ``rf_jump``, ``rf_start``: the field of the output as (height,
    width) pairs (see the module docstring), or None for a non-spatial output."""

    name: str
    type: str
    depth: int
    is_leaf: bool
    input_shape: object = None
    output_shape: object = None
    params: int = 0
    trainable_params: int = 0
    macs: int = 0
    flops: int | None = 0
    output_bytes: int = 0
    im2col_bytes: int = 0
    rf: object = None            # the output's ReceptiveField, or None
    children: list = field(default_factory=list, repr=False)

    @property
    def receptive_field(self):
        return None if self.rf is None else self.rf.size

    @property
    def rf_jump(self):
        return None if self.rf is None else self.rf.jump

    @property
    def rf_start(self):
        return None if self.rf is None else self.rf.start


class ModelSummary:
    """What ``summary`` returns: ``rows`` (every module call, ``LayerSummary``), ``layers``
    (the leaf rows), the totals (``total_params``, ``trainable_params``,
    ``non_trainable_params``, ``total_macs``, ``total_flops``, ``activation_bytes``,
    ``input_bytes``, ``params_bytes``, ``im2col_max_bytes``), ``receptive_field`` (the
    (height, width) field size of the last spatial call before any global pooling, or
    None) and ``str()``: the table.
    ``summary["features.0"]`` is the first row of that module."""

    def __init__(self, model_name, rows, input_shapes, dtype, total_params, trainable_params,
                 params_bytes, uncounted, depth, receptive_field=None):
        self.model_name = model_name
        self.rows = rows
        self.input_shapes = input_shapes
        self.dtype = dtype
        self.total_params = total_params
        self.trainable_params = trainable_params
        self.non_trainable_params = total_params - trainable_params
        self.params_bytes = params_bytes
        self.uncounted = uncounted
        self.depth = depth
        self.receptive_field = receptive_field
        leaves = self.layers
        self.total_macs = sum(r.macs for r in leaves)
        self.total_flops = sum(r.flops for r in leaves if r.flops is not None)
        self.activation_bytes = sum(r.output_bytes for r in leaves)
        self.im2col_max_bytes = max((r.im2col_bytes for r in leaves), default=0)
        self.input_bytes = sum(math.prod(s) for s in input_shapes) * np.dtype(dtype).itemsize

    @property
    def layers(self):
        return [r for r in self.rows if r.is_leaf]

    def __getitem__(self, name):
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"summary: no module call named {name!r}")

    def __iter__(self):
        return iter(self.rows)

    def __len__(self):
        return len(self.rows)

    def __str__(self):
        return _format(self)

    def __repr__(self):
        return _format(self)


# ----------------------------------------------------------------------------- shape rules
# A rule: rule(module, x) -> (output shape, MACs, FLOPs, im2col bytes), x a Tensor (shape
# and dtype are all it may use). It validates the input like the layer does.


def _bad_input(module, expected, x):
    return ShapeError(f"{module!r}: expected input {expected}, got {x.shape}")


def _spatial(module, x):
    if x.ndim not in (3, 4):
        raise _bad_input(module, "(N, C, H, W) or (C, H, W)", x)
    return x.shape[:-2], x.shape[-2], x.shape[-1]


def _conv_rule(m, x):
    if x.ndim not in (3, 4) or x.shape[-3] != m.in_channels:
        raise _bad_input(m, f"(N, {m.in_channels}, H, W)", x)
    lead, H, W = _spatial(m, x)
    (KH, KW), (SH, SW), (DH, DW) = m.kernel_size, m.stride, m.dilation
    pad_h, pad_w = geometry.conv_padding(m.padding, m.kernel_size, m.stride, m.dilation,
                                         op=repr(m))
    for size, pads, k, d, what in ((H, pad_h, KH, DH, "height"), (W, pad_w, KW, DW, "width")):
        padded, reach = size + sum(pads), d * (k - 1) + 1
        if padded < reach:
            raise ShapeError(f"{m!r}: input {x.shape} is too small: its padded {what} "
                             f"({padded}) is smaller than the (dilated) kernel ({reach})")
    OH = geometry.conv_output_size(H, KH, SH, pad_h, DH)
    OW = geometry.conv_output_size(W, KW, SW, pad_w, DW)
    N = math.prod(lead[:-1])  # 1 for an unbatched (C, H, W) input
    out_positions = N * m.out_channels * OH * OW
    macs = out_positions * (m.in_channels // m.groups) * KH * KW
    flops = 2 * macs + (out_positions if m.bias is not None else 0)
    col = m.in_channels * KH * KW * N * OH * OW * x.dtype.itemsize
    return lead[:-1] + (m.out_channels, OH, OW), macs, flops, col


def _conv_transpose_rule(m, x):
    """A transposed conv multiplies every input pixel by a (OC/groups, KH, KW) slice of the
    weight: MACs = N * C * H * W * (OC / groups) * KH * KW; its columns are the adjoint
    conv's, (OC/groups * KH * KW) rows by N * H * W per group."""
    if x.ndim not in (3, 4) or x.shape[-3] != m.in_channels:
        raise _bad_input(m, f"(N, {m.in_channels}, H, W)", x)
    lead, H, W = _spatial(m, x)
    OH, OW = (geometry.conv_transpose_output_size(L, K, S, P, D, OP) for L, K, S, P, D, OP in
              zip((H, W), m.kernel_size, m.stride, m.padding, m.dilation, m.output_padding))
    N = math.prod(lead[:-1])
    KH, KW = m.kernel_size
    in_positions = N * m.in_channels * H * W
    macs = in_positions * (m.out_channels // m.groups) * KH * KW
    flops = 2 * macs + (N * m.out_channels * OH * OW if m.bias is not None else 0)
    col = m.out_channels * KH * KW * N * H * W * x.dtype.itemsize
    return lead[:-1] + (m.out_channels, OH, OW), macs, flops, col


def _linear_rule(m, x):
    if x.ndim == 0 or x.shape[-1] != m.in_features:
        raise _bad_input(m, f"(..., {m.in_features})", x)
    rows = math.prod(x.shape[:-1])
    macs = rows * m.in_features * m.out_features
    flops = 2 * macs + (rows * m.out_features if m.bias is not None else 0)
    return x.shape[:-1] + (m.out_features,), macs, flops, 0


def _batchnorm_rule(m, x):
    if x.ndim not in m.input_ranks or x.shape[1] != m.num_features:
        raise _bad_input(m, m.expected_input_text(), x)
    return x.shape, 0, 2 * math.prod(x.shape), 0


def _window_pool(m, x, dilation):
    """Output shape and taps per window (KH * KW) of a max or average pooling."""
    lead, H, W = _spatial(m, x)
    op = repr(m)
    KH, KW = geometry.pair(m.kernel_size, "kernel_size", op)
    SH, SW = geometry.pair(m.stride if m.stride is not None else m.kernel_size, "stride", op)
    PH, PW = geometry.pair(m.padding, "padding", op)
    DH, DW = geometry.pair(dilation, "dilation", op)
    OH = geometry.pool_output_size(H, KH, SH, PH, DH, m.ceil_mode)
    OW = geometry.pool_output_size(W, KW, SW, PW, DW, m.ceil_mode)
    if OH < 1 or OW < 1:
        raise ShapeError(f"{m!r}: input {x.shape} is too small (output {OH}x{OW})")
    return lead + (OH, OW), KH * KW


def _maxpool_rule(m, x):
    shape, k = _window_pool(m, x, m.dilation)
    return shape, 0, math.prod(shape) * (k - 1), 0


def _avgpool_rule(m, x):
    shape, k = _window_pool(m, x, 1)
    return shape, 0, math.prod(shape) * k, 0


def _windows_length(L, O):
    """Total length of the O adaptive windows over L (they may overlap)."""
    starts, ends = geometry.adaptive_windows(L, O)
    return int((ends - starts).sum())


def _adaptive_rule(m, x, is_max):
    lead, H, W = _spatial(m, x)
    OH, OW = geometry.adaptive_output_size((H, W), m.output_size, repr(m))
    planes = math.prod(lead)
    taps = _windows_length(H, OH) * _windows_length(W, OW) * planes
    flops = taps - planes * OH * OW if is_max else taps
    return lead + (OH, OW), 0, flops, 0


def _elementwise(per_element):
    def rule(m, x):
        return x.shape, 0, per_element * math.prod(x.shape), 0
    return rule


def _dropout_rule(m, x):
    active = m.training and m.p > 0
    return x.shape, 0, math.prod(x.shape) if active else 0, 0


def _flatten_rule(m, x):
    if x.ndim == 0:
        return (1,), 0, 0, 0
    start, end = (d % x.ndim for d in (m.start_dim, m.end_dim))
    shape = x.shape[:start] + (math.prod(x.shape[start:end + 1]),) + x.shape[end + 1:]
    return shape, 0, 0, 0


_RULES = {
    nn.Conv2d: _conv_rule,
    nn.ConvTranspose2d: _conv_transpose_rule,
    nn.Linear: _linear_rule,
    nn.BatchNorm1d: _batchnorm_rule,
    nn.BatchNorm2d: _batchnorm_rule,
    nn.MaxPool2d: _maxpool_rule,
    nn.AvgPool2d: _avgpool_rule,
    nn.AdaptiveAvgPool2d: lambda m, x: _adaptive_rule(m, x, False),
    nn.AdaptiveMaxPool2d: lambda m, x: _adaptive_rule(m, x, True),
    nn.ReLU: _elementwise(1),
    nn.ReLU6: _elementwise(1),
    nn.LeakyReLU: _elementwise(1),
    nn.Tanh: _elementwise(1),
    nn.Sigmoid: _elementwise(1),
    nn.GELU: _elementwise(1),
    nn.Softmax: _elementwise(3),
    nn.LogSoftmax: _elementwise(3),
    nn.Dropout: _dropout_rule,
    nn.Flatten: _flatten_rule,
    nn.Identity: lambda m, x: (x.shape, 0, 0, 0),
}

# issue 15's elementwise activations: one op per element, like the ones above (PReLU's
# weight is per channel, so its rule needs nothing but the input's shape either)
_RULES.update({nn.SiLU: _elementwise(1), nn.Hardswish: _elementwise(1),
               nn.ELU: _elementwise(1), nn.PReLU: _elementwise(1)})


def register_layer_rule(cls, rule):
    """Teach ``summary`` a leaf layer: ``rule(module, x) -> (output_shape, macs, flops,
    im2col_bytes)`` where ``x`` is the input Tensor (use only its shape and dtype)."""
    _RULES[cls] = rule


def _rule_for(module):
    cls = type(module)
    for base in cls.__mro__:
        if base in _RULES:
            # a subclass with its own forward may compute something else: run it for real
            return _RULES[base] if cls.forward is base.forward else None
    return None


# ----------------------------------------------------------------------------- receptive fields


class ReceptiveField(NamedTuple):
    """The receptive field of a layer's outputs, as (height, width) pairs: ``size`` (input
    pixels one output sees), ``jump`` (input pixels between neighbouring outputs),
    ``start`` (centre of the first output's field; input pixel ``i`` is centred at ``i``).
    ``global_pool``: the field comes through a global pooling (it sees everything)."""

    size: tuple
    jump: tuple
    start: tuple
    global_pool: bool = False

    @classmethod
    def of_input(cls):
        """An input pixel sees itself: size 1, jump 1, start 0."""
        return cls((1, 1), (1, 1), (0, 0))

    def through_window(self, kernel, stride, pad_before, dilation, global_pool=False):
        """The field after a sliding window (conv or pooling), per axis:
        jump_out = jump * s, size_out = size + d (k - 1) jump,
        start_out = start + (d (k - 1) / 2 - p) jump (p: the padding before)."""
        sizes, jumps, starts = [], [], []
        for size, jump, start, k, s, p, d in zip(self.size, self.jump, self.start, kernel,
                                                  stride, pad_before, dilation):
            reach = d * (k - 1)                 # the dilated kernel's extent minus one
            sizes.append(_tidy(size + reach * jump))
            jumps.append(_tidy(jump * s))
            starts.append(_tidy(start + (reach / 2 - p) * jump))
        return ReceptiveField(tuple(sizes), tuple(jumps), tuple(starts),
                              self.global_pool or global_pool)


def _tidy(v):
    """An integral float as an int (3.0 -> 3), so the table reads 212, not 212.0."""
    return int(v) if float(v).is_integer() else float(v)


def _largest(fields):
    """The field of a sum or concatenation of tensors: per axis, the largest of theirs
    (it contains the others: a residual's longer path, Inception's widest branch)."""
    fields = [f for f in fields if f is not None]
    if not fields:
        return None
    axes = []
    for axis in (0, 1):
        best = max(fields, key=lambda f: f.size[axis])
        axes.append((best.size[axis], best.jump[axis], best.start[axis]))
    size, jump, start = zip(*axes)
    return ReceptiveField(size, jump, start, any(f.global_pool for f in fields))


def _is_spatial(shape):
    return shape is not None and len(shape) in (3, 4)


def _same_plane(shape_a, shape_b):
    """Both spatial, with the same height and width."""
    return _is_spatial(shape_a) and _is_spatial(shape_b) and shape_a[-2:] == shape_b[-2:]


def _conv_field(m, rf, x, out_shape):
    pad_h, pad_w = geometry.conv_padding(m.padding, m.kernel_size, m.stride, m.dilation,
                                         op=repr(m))
    return rf.through_window(m.kernel_size, m.stride, (pad_h[0], pad_w[0]), m.dilation)


def _pool_field(m, rf, x, out_shape):
    op = repr(m)
    kernel = geometry.pair(m.kernel_size, "kernel_size", op)
    stride = geometry.pair(m.stride if m.stride is not None else m.kernel_size, "stride", op)
    padding = geometry.pair(m.padding, "padding", op)
    dilation = geometry.pair(getattr(m, "dilation", 1), "dilation", op)
    return rf.through_window(kernel, stride, padding, dilation)


def _adaptive_field(m, rf, x, out_shape):
    """An adaptive pooling's windows differ by at most one pixel: its largest window is the
    kernel, its mean stride L / O the stride, the first window's centre gives the start;
    an output of 1 is a global pooling (the whole input)."""
    kernels, strides, pads = [], [], []
    for L, O in zip(x.shape[-2:], out_shape[-2:]):
        starts, ends = geometry.adaptive_windows(L, O)
        kernels.append(int((ends - starts).max()))
        strides.append(L / O)
        pads.append((kernels[-1] - int(ends[0])) / 2)   # first window [0, end): centred left
    whole = tuple(out_shape[-2:]) == (1, 1)
    return rf.through_window(kernels, strides, pads, (1, 1), global_pool=whole)


# field rules: rule(module, input field, x, output shape) -> the output's field
_FIELD_RULES = {
    nn.Conv2d: _conv_field,
    nn.MaxPool2d: _pool_field,
    nn.AvgPool2d: _pool_field,
    nn.AdaptiveAvgPool2d: _adaptive_field,
    nn.AdaptiveMaxPool2d: _adaptive_field,
}


def _field_rule_for(module):
    for base in type(module).__mro__:
        if base in _FIELD_RULES:
            return _FIELD_RULES[base]
    return None


class _FieldTable:
    """The receptive field of every placeholder the propagation made (id -> (tensor,
    field); the tensor is kept so its id is not reused), and of anything computed from
    them between modules, found by walking the autograd graph back to them."""

    def __init__(self):
        self.known = {}

    def set(self, tensor, rf):
        self.known[id(tensor)] = (tensor, rf)

    def of(self, tensor):
        """The field of ``tensor``: from the table, else from the ops that made it."""
        if id(tensor) in self.known:
            return self.known[id(tensor)][1]
        if tensor.grad_fn is None:          # a constant, or a parameter: no field
            return None
        return self._of_node(tensor.grad_fn, 0, {})

    def _of_node(self, node, output_nr, memo):
        """The field of output ``output_nr`` of graph node ``node``: the largest field of
        its inputs, or None when the op changes the height or width (or drops them)."""
        key = id(node)
        if key not in memo:
            memo[key] = None                # guards against revisiting while in progress
            inputs = []                     # (field, shape) per input that has a producer
            for edge in node.next_functions:
                if edge is None:
                    continue
                producer, nr = edge
                if isinstance(producer, Tensor):
                    inputs.append((self.of(producer), producer.shape))
                else:
                    inputs.append((self._of_node(producer, nr, memo),
                                   producer.output_meta[nr][0]))
            memo[key] = inputs
        out_shape = node.output_meta[output_nr][0]
        fields = [rf for rf, shape in memo[key] or ()
                  if rf is not None and _same_plane(shape, out_shape)]
        if len(fields) < len([rf for rf, _ in memo[key] or () if rf is not None]):
            return None                     # an input's plane was resized: unknown
        return _largest(fields)



# ----------------------------------------------------------------------------- propagation


def _placeholder(shape, dtype):
    """A Tensor of ``shape`` holding one zero broadcast over it (no memory per element).
    A floating one requires grad, so the ops run on it between modules are recorded and
    the receptive-field walk can follow them back (nothing is ever backpropagated)."""
    data = np.broadcast_to(np.zeros((), dtype=dtype), tuple(shape))
    return Tensor(data, requires_grad=np.dtype(dtype).kind == "f")


def _shapes(obj):
    """The shape of a Tensor, or a list of shapes for tuples/lists/dicts of them."""
    if isinstance(obj, Tensor):
        return obj.shape
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        found = [_shapes(o) for o in obj if o is not None]
        return [s for s in found if s is not None] or None
    return None


def _tensors(obj):
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            yield from _tensors(v)


class _Recorder:
    """Answers the model's module calls (through ``nn.intercept_calls``) and records a
    ``LayerSummary`` row for each: a known leaf layer by its shape rule, any other module
    (containers, unknown leaves) by running its real ``forward`` on the placeholders."""

    def __init__(self, model):
        self.rows = []
        self.stack = []
        self.seen = set()            # ids of modules whose own parameters were counted
        self.uncounted = set()
        self.names = {id(m): n for n, m in model.named_modules()}
        self.fields = _FieldTable()
        self.last_field = None       # of the last call that ended with a spatial field

    def __call__(self, module, args, kwargs):
        if id(module) not in self.names:  # a module outside the model: not ours to count
            return NotImplemented
        row = self.enter(module, args)
        if row.is_leaf:
            rule = _rule_for(module)
            out = (self.apply_rule(module, rule, args, kwargs) if rule is not None
                   else self.run_uncounted(module, args, kwargs))
        else:
            out = module.forward(*args, **kwargs)
        self.leave(out)
        return out

    def enter(self, module, args):
        x = next(_tensors(args), None)
        leaf = not any(True for _ in module.children())
        if leaf:
            own = [p for p in module.parameters(recurse=False)]
            if id(module) in self.seen:
                own = []
            self.seen.add(id(module))
        else:
            own = list(module.parameters())
        row = LayerSummary(
            name=self.names[id(module)], type=type(module).__name__,
            depth=len(self.stack), is_leaf=leaf,
            input_shape=None if x is None else x.shape,
            params=sum(p.numel() for p in own),
            trainable_params=sum(p.numel() for p in own if p.requires_grad),
            flops=0 if not leaf else None)
        if self.stack:
            self.stack[-1].children.append(row)
        self.rows.append(row)
        self.stack.append(row)
        return row

    def leave(self, out):
        row = self.stack.pop()
        row.output_shape = _shapes(out)
        first = next(_tensors(out), None)
        if first is not None and _is_spatial(first.shape):
            row.rf = self.fields.of(first)
            if row.rf is not None and not row.rf.global_pool:
                self.last_field = row.rf
        if row.is_leaf:
            row.output_bytes = sum(t.numel() * t.dtype.itemsize for t in _tensors(out))
            for parent in self.stack:
                parent.macs += row.macs
                parent.output_bytes += row.output_bytes
                parent.im2col_bytes += row.im2col_bytes
                if row.flops is None:
                    parent.flops = None
                elif parent.flops is not None:
                    parent.flops += row.flops

    def apply_rule(self, module, rule, args, kwargs):
        """The layer's output as a placeholder of the shape its rule computes."""
        x = args[0] if args else next(iter(kwargs.values()))
        if not isinstance(x, Tensor):
            raise TypeError(f"{module!r}: expected a minidl Tensor as input, got "
                            f"{type(x).__name__}")
        shape, macs, flops, col = rule(module, x)
        row = self.stack[-1]
        row.macs, row.flops, row.im2col_bytes = int(macs), int(flops), int(col)
        out = _placeholder(shape, x.dtype)
        self.fields.set(out, self.field_after(module, x, shape))
        if getattr(module, "return_indices", False):
            return out, _placeholder(shape, np.int64)
        return out

    def field_after(self, module, x, out_shape):
        """The receptive field of the layer's output: its field rule's, the input's for a
        layer that keeps the height and width, else none."""
        rf = self.fields.of(x) if _is_spatial(x.shape) else None
        if rf is None or not _is_spatial(out_shape):
            return None
        rule = _field_rule_for(module)
        if rule is not None:
            return rule(module, rf, x, out_shape)
        return rf if _same_plane(x.shape, out_shape) else None

    def run_uncounted(self, module, args, kwargs):
        """A leaf layer without a rule: its real forward, its FLOPs unknown."""
        self.uncounted.add(type(module).__name__)
        self.stack[-1].flops = None
        return module.forward(*args, **kwargs)


def _input_shapes(input_size, batch_size):
    sizes = input_size
    if isinstance(sizes, (tuple, list)) and sizes and all(isinstance(s, (int, np.integer))
                                                          for s in sizes):
        sizes = [tuple(sizes)]
    shapes = []
    for s in sizes:
        s = tuple(int(v) for v in s)
        shapes.append(s if batch_size is None else (int(batch_size),) + s)
    return shapes


def summary(model, input_size, batch_size=1, dtype=None, mode="eval", depth=None,
            verbose=True, file=None):
    """Summarise ``model`` for inputs of ``input_size``, by shape propagation.

    Args:
        model: a ``minidl.nn.Module``.
        input_size: the shape of one sample, without the batch dim (torchsummary's
            convention: ``(3, 224, 224)``), or a list of such shapes for several inputs.
            With ``batch_size=None`` the shapes are taken whole (torchinfo's convention).
        batch_size: prepended to each input shape (1).
        dtype: the inputs' dtype (default: the dtype of the model's first floating point
            parameter, else float32); sets the byte counts.
        mode: ``'eval'`` (default: e.g. GoogLeNet without its auxiliary heads),
            ``'train'`` (Dropout active, auxiliary heads run) or ``'same'`` (as the model
            is). The model's own modes are restored afterwards.
        depth: show rows down to this nesting depth (None: all); rows at the cut-off show
            the totals of their layers. Totals are unaffected.
        verbose: print the table (to ``file``, default stdout).

    Returns:
        ``ModelSummary``: ``rows``, ``layers``, ``total_params``, ``trainable_params``,
        ``non_trainable_params``, ``total_macs``, ``total_flops``, ``activation_bytes``,
        ``input_bytes``, ``params_bytes``, ``im2col_max_bytes``; ``str()`` is the table.

    Conventions: MACs are the multiply-accumulates of Conv2d and Linear layers; FLOPs =
    2 per MAC + 1 per bias add (+ the elementwise work of the other layers); see the
    module docstring for every layer's count.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"summary: expected a minidl.nn.Module, got {type(model).__name__}")
    if mode not in ("eval", "train", "same"):
        raise ValueError(f"summary: mode must be 'eval', 'train' or 'same', got {mode!r}")
    params = list(model.parameters())
    if dtype is None:
        floats = [p.dtype for p in params if p.dtype.kind == "f"]
        dtype = floats[0] if floats else np.dtype(np.float32)
    dtype = np.dtype(dtype)
    shapes = _input_shapes(input_size, batch_size)

    modes = {m: m.training for m in model.modules()}
    rec = _Recorder(model)
    try:
        if mode != "same":
            model.train(mode == "train")
        inputs = [_placeholder(s, dtype) for s in shapes]
        for x in inputs:
            if _is_spatial(x.shape):
                rec.fields.set(x, ReceptiveField.of_input())
        with enable_grad(), nn.intercept_calls(rec):   # recorded: see _FieldTable
            model(*inputs)
    finally:
        for m, training in modes.items():
            m.training = training

    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    params_bytes = sum(p.numel() * p.dtype.itemsize for p in params)
    result = ModelSummary(type(model).__name__, rec.rows, shapes, dtype, total, trainable,
                          params_bytes, sorted(rec.uncounted), depth,
                          None if rec.last_field is None else rec.last_field.size)
    if verbose:
        print(result, file=file if file is not None else sys.stdout)
    return result


# ----------------------------------------------------------------------------- printing


def _shape_text(shape):
    if shape is None:
        return "--"
    if isinstance(shape, list):
        return ", ".join(_shape_text(s) for s in shape)
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _pair_text(pair):
    """(5, 5) -> '5', (5, 3) -> '5x3' (height x width); 2.5 -> '2.5'."""
    h, w = (f"{v:g}" for v in pair)
    return h if h == w else f"{h}x{w}"


def _field_text(rf):
    """The receptive-field cell: 'size / jump' ('435 / 32', '5x3 / 1x2'), '-' for none.
    One combined column keeps the already wide table readable; the start is on the rows
    (``rf_start``) rather than in the table: it only matters to align fields to pixels."""
    if rf is None:
        return "-"
    return f"{_pair_text(rf.size)} / {_pair_text(rf.jump)}"


def _num(v):
    return "?" if v is None else f"{v:,}"


def _human(n, unit=""):
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n} {unit}".rstrip()


def _mb(nbytes):
    return f"{nbytes / 2**20:,.2f} MB"


def _format(s):
    headers = ["Layer (type)", "Output Shape", "RF / jump", "Param #", "MACs", "FLOPs", "Output bytes",
               "im2col bytes"]
    table = []
    for r in s.rows:
        if s.depth is not None and r.depth > s.depth:
            continue
        label = "  " * r.depth + (f"{r.name} ({r.type})" if r.name else r.type)
        cut = r.is_leaf or (s.depth is not None and r.depth == s.depth)
        if cut:
            cells = [_num(r.params), _num(r.macs), _num(r.flops), _num(r.output_bytes),
                     _num(r.im2col_bytes) if r.im2col_bytes else "--"]
            if r.is_leaf:  # parameter-free layers and layers without products
                cells[0] = "--" if r.params == 0 else cells[0]
                cells[1] = "--" if r.macs == 0 else cells[1]
        else:
            cells = ["--"] * 5
        table.append([label, _shape_text(r.output_shape), _field_text(r.rf)] + cells)
    widths = [max(len(h), *(len(row[i]) for row in table)) if table else len(h)
              for i, h in enumerate(headers)]

    def line(cells):
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[2:], widths[2:])]
        return "  ".join([first, cells[1].ljust(widths[1])] + rest)

    width = len(line(headers))
    out = ["=" * width,
           f"{s.model_name}: input {', '.join(_shape_text(x) for x in s.input_shapes)} "
           f"{s.dtype.name}",
           "MACs: multiply-accumulates of Conv2d/Linear.  FLOPs: 1 MAC = 2 FLOPs, + 1 FLOP "
           "per bias add, + elementwise ops of other layers.",
           "RF / jump: receptive field (input pixels one output sees) / input pixels "
           "between neighbouring outputs; HxW when they differ.",
           "=" * width, line(headers), "-" * width]
    out += [line(row) for row in table]
    out += ["=" * width,
            f"Total params: {s.total_params:,}",
            f"Trainable params: {s.trainable_params:,}",
            f"Non-trainable params: {s.non_trainable_params:,}",
            f"Total MACs: {s.total_macs:,} ({_human(s.total_macs)})",
            f"Total FLOPs: {s.total_flops:,} ({_human(s.total_flops)})"
            + (f"  (not counted: {', '.join(s.uncounted)})" if s.uncounted else ""),
            f"Receptive field: "
            f"{'-' if s.receptive_field is None else _pair_text(s.receptive_field)}"
            " (the last spatial layer before global pooling)",
            "-" * width,
            f"Input size: {_mb(s.input_bytes)}",
            f"Params size: {_mb(s.params_bytes)}",
            f"Activation memory (layer outputs kept for backward): {_mb(s.activation_bytes)}",
            f"Largest im2col buffer: {_mb(s.im2col_max_bytes)}",
            f"Estimated total size: "
            f"{_mb(s.input_bytes + s.params_bytes + s.activation_bytes)}",
            "=" * width]
    return "\n".join(out)


# issue 15: the layers of MobileNetV3, EfficientNet and ConvNeXt.
# LayerNorm / GroupNorm compute their statistics at inference too, per element: mean
# 1 add, variance 3 (subtract, square, add), normalise 1 (multiply by 1/std), plus 2 for
# the affine (multiply, add) when the layer has one. Hardsigmoid 1 per element (like
# ReLU6); StochasticDepth as Dropout (1 per element in training, 0 in eval); Permute 0.


def _layernorm_rule(m, x):
    D = tuple(m.normalized_shape)
    if x.ndim < len(D) or tuple(x.shape[x.ndim - len(D):]) != D:
        raise _bad_input(m, "(*, " + ", ".join(str(d) for d in D) + ")", x)
    return x.shape, 0, (7 if m.weight is not None else 5) * math.prod(x.shape), 0


def _layernorm2d_rule(m, x):
    (C,) = m.normalized_shape
    if x.ndim != 4 or x.shape[1] != C:
        raise _bad_input(m, f"(N, {C}, H, W)", x)
    return x.shape, 0, (7 if m.weight is not None else 5) * math.prod(x.shape), 0


def _groupnorm_rule(m, x):
    if x.ndim < 2 or x.shape[1] != m.num_channels:
        raise _bad_input(m, f"(N, {m.num_channels}, *)", x)
    return x.shape, 0, (7 if m.weight is not None else 5) * math.prod(x.shape), 0


def _stochastic_depth_rule(m, x):
    active = m.training and m.p > 0
    return x.shape, 0, math.prod(x.shape) if active else 0, 0


def _permute_rule(m, x):
    if x.ndim != len(m.dims):
        raise _bad_input(m, f"{len(m.dims)} dims", x)
    return tuple(x.shape[d] for d in m.dims), 0, 0, 0


_RULES.update({nn.LayerNorm: _layernorm_rule, nn.LayerNorm2d: _layernorm2d_rule,
               nn.GroupNorm: _groupnorm_rule, nn.Hardsigmoid: _elementwise(1),
               nn.StochasticDepth: _stochastic_depth_rule, nn.Permute: _permute_rule})
