"""Pictures of the autograd graph: Graphviz DOT text, one node per op and per leaf.

The graph a forward pass records is the graph ``backward()`` walks. Seeing it answers a
learner's first questions: which ops ran, in which order, on which parameters, with which
output shapes, and how much memory each op keeps for its backward::

    import minidl
    from minidl import viz
    from minidl.nn import functional as F

    net = minidl.models.lenet5()
    loss = F.cross_entropy(net(x), y)
    g = viz.graph(loss, params=dict(net.named_parameters()))
    print(g)                  # the DOT text (also g.source)
    g.save("lenet.dot")       # the DOT text, for `dot -Tsvg lenet.dot > lenet.svg`
    g.render("lenet.svg")     # needs Graphviz (see below); in Jupyter, `g` shows as a picture

What the picture shows
----------------------
- **op nodes** (rounded boxes): one per ``Function`` call recorded by autograd, labelled with
  the op's name, its output shape (and dtype when it is not float32) and the bytes it saved
  for backward (``saved 1.2 MB``; ``saved: freed`` once ``backward()`` has released them).
  The bytes are those of every array the op keeps, whether a new one (tanh's output, a
  ReLU's mask) or one that lives on anyway (a linear layer keeps its weight); a module node
  and ``Graph.saved_bytes`` count an array kept by two ops once.
  The op that produced an output tensor is drawn with a thick border.
- **leaf nodes** (filled boxes): the tensors the graph starts from that require a gradient.
  Parameters are named from ``params`` (``conv1.weight (6, 1, 5, 5)``); any other leaf is an
  ``input``. Tensors that do not require a gradient (a batch of images, the labels, the
  running statistics of batch norm) are not in the graph: autograd recorded no edge to them.
- **edges** point the way the forward pass went, from producer to consumer, one per input of
  an op (``x * x`` has two edges from the same producer).

Node ids (``n0, n1, ...``) are given in the order a depth-first walk from the outputs finds
the nodes, producers first, following each op's inputs in order: the same graph always gets
the same text. The walk is iterative, so a ResNet-152 does not reach Python's recursion limit.

Collapsing a network: ``trace`` and ``depth``
---------------------------------------------
A ResNet-18 forward records some seventy ops; a ResNet-152 several hundred. ``depth=`` draws
one node per module call at that nesting depth instead (``depth=1``: ``conv1``, ``layer1``,
..., ``fc``; ``depth=2``: ``layer1.0``, ``layer1.1``, ...; ``depth=0``: the whole model). The
autograd graph does not know which module made an op, so the forward pass has to run inside
``viz.trace(model)``, which watches module calls through the public forward hooks of
``nn.Module``::

    with viz.trace(net) as t:
        loss = F.cross_entropy(net(x), y)
    print(t.graph(loss, depth=1))      # = viz.graph(loss, params=..., depth=1, trace=t)

An op belongs to the innermost module call that made it. Ops made outside any module of the
model (the loss, or a ``flatten`` written in the model's own ``forward``) stay single nodes,
and so do leaves that are not folded: a parameter is drawn inside its module's node (and
counted there) when every op that uses it lies in that node. A module called twice (LeNet's
``max_pool``) gives two nodes, ``max_pool`` and ``max_pool#2``: each call is one step of the
forward pass, and merging them would draw a cycle.

How a call finds its ops: when a module returns, the trace walks back from the module's
output through the ops recorded since, stopping at the module's inputs; every op on the way
that no inner call has claimed is the module's own. A module that computes with a tensor it
did not receive as an argument (a tensor kept from an earlier call, a keyword argument) can
make the walk run past its start; the ops found there are then drawn inside it.

Rendering
---------
``Graph.render(path)`` and the notebook picture need Graphviz: the ``graphviz`` Python
package (``pip install graphviz``, or ``pip install minidl[viz]``) and its ``dot`` program
(``apt-get install graphviz`` on Debian and Ubuntu). Without them ``render`` raises a
``RuntimeError`` that says so; the DOT text works everywhere.

The walk reads two attributes of autograd's graph nodes that are not public yet (see
``_producers`` and ``_output_meta`` below): the node's inputs and its outputs' shapes.
"""
from __future__ import annotations

import collections
import os
import weakref

from .autograd import Tensor
from .serialization import atomic_write

__all__ = ["Graph", "Node", "Trace", "graph", "trace", "walk",
           # what a CNN looks at (minidl/cnn_maps.py)
           "FeatureMaps", "Filters", "Saliency", "Occlusion", "feature_maps", "filters",
           "saliency", "occlusion"]

RENDER_HINT = ("minidl.viz: rendering needs Graphviz: pip install graphviz and apt-get install "
               "graphviz; the DOT text is in graph.source")

# ----------------------------------------------------------------------------- the autograd graph
# Everything viz knows about autograd's nodes (``Tensor.grad_fn``, a Context) goes through
# these three functions, and only through its public properties (``name``, ``next_functions``,
# ``output_meta``, ``saved_tensors``).


def _producers(node):
    """Per input of ``node``: ``(producer, output_nr)``, where the producer is a graph node,
    ``(leaf Tensor, None)``, or ``None`` for an input that needs no gradient."""
    return node.next_functions


def _output_meta(node):
    """Per output of ``node``: ``(shape, dtype)``."""
    return node.output_meta


def _saved_arrays(node):
    """The arrays ``node`` saved for backward (each once), or ``None`` when ``backward()``
    has freed them. An op may save a tuple holding arrays (conv2d saves ``('x', x)`` or
    ``('col', col)``): those are found inside it."""
    try:
        saved = node.saved_tensors
    except RuntimeError:  # released by a backward pass without retain_graph
        return None
    found, seen, stack = [], set(), list(saved)
    while stack:
        s = stack.pop()
        if isinstance(s, (tuple, list)):
            stack.extend(s)
        elif hasattr(s, "nbytes") and id(s) not in seen:
            seen.add(id(s))
            found.append(s)
    return found


def _bytes_of(ops):
    """Bytes saved for backward by ``ops`` together (an array two ops keep, such as the
    output of a tanh that the next linear layer keeps as its input, is counted once), or
    ``None`` when backward has freed them."""
    seen, total = set(), 0
    for op in ops:
        arrays = _saved_arrays(op)
        if arrays is None:
            return None
        for a in arrays:
            if id(a) not in seen:
                seen.add(id(a))
                total += int(a.nbytes)
    return total


def _is_node(item):
    return not isinstance(item, Tensor)


def _inputs(item):
    """The producers of ``item``'s inputs, in order, as ``(slot, producer, output_nr)``;
    a leaf tensor has none."""
    if not _is_node(item):
        return []
    return [(slot, e[0], e[1]) for slot, e in enumerate(_producers(item)) if e is not None]


# ----------------------------------------------------------------------------- formatting


def format_bytes(n):
    """``1234567`` -> ``'1.2 MB'`` (decimal units, as a file manager shows them)."""
    if n < 1000:
        return f"{n} B"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000.0
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"


def _shape_text(shape, dtype):
    text = str(tuple(shape))
    if str(dtype) != "float32":
        text += f" {dtype}"
    return text


def _quote(text):
    """``text`` as a DOT string: quotes and backslashes escaped, newlines as ``\\n``."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


# ----------------------------------------------------------------------------- trace


class ModuleCall:
    """One call of a module during a traced forward pass.

    Attributes: ``name`` (dotted, as in ``named_modules``; ``''`` for the traced model),
    ``module_type`` (the class name), ``parent`` (the enclosing call, or ``None``),
    ``depth`` (the number of dotted parts of ``name``: 0 for the model, 1 for its children),
    ``number`` (1 for a module's first call, 2 for its second...), ``output_shapes``.
    """

    def __init__(self, name, module_type, parent, number):
        self.name = name
        self.module_type = module_type
        self.parent = parent
        self.depth = len(name.split(".")) if name else 0
        self.number = number
        self.output_shapes = []
        self.input_nodes = set()  # graph nodes of the inputs: where the walk back stops

    @property
    def label(self):
        """``layer1.0``, ``max_pool#2`` for a second call, the class name for the model."""
        base = self.name or self.module_type
        return base if self.number == 1 else f"{base}#{self.number}"

    def is_within(self, other):
        """Whether this call is ``other`` or runs inside it."""
        call = self
        while call is not None:
            if call is other:
                return True
            call = call.parent
        return False

    def at_depth(self, depth):
        """The call at nesting ``depth`` that contains this one (this one when it is not
        deeper than ``depth``)."""
        call = self
        while call.depth > depth and call.parent is not None:
            call = call.parent
        return call

    def __repr__(self):
        return f"<ModuleCall {self.label} ({self.module_type})>"


def _tensors_in(obj):
    """The Tensors in a module's arguments or output (nested tuples, lists and dicts)."""
    found, stack = [], [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, Tensor):
            found.append(o)
        elif isinstance(o, (tuple, list)):
            stack.extend(reversed(o))
        elif isinstance(o, dict):
            stack.extend(reversed(list(o.values())))
    return found


class Trace:
    """Records which module call made each op while a forward pass runs; made by ``trace``.

    Use it as a context manager around the forward pass (hooks are registered on entry and
    removed on exit), then draw with ``graph(output, depth=..., trace=t)`` or ``t.graph``.
    ``calls`` lists the module calls in the order they started.
    """

    def __init__(self, model):
        if not hasattr(model, "named_modules") or not hasattr(model, "register_forward_hook"):
            raise TypeError(f"viz.trace: model must be an nn.Module, got "
                            f"{type(model).__name__}")
        self.model = model
        self.calls = []
        self._owner = weakref.WeakKeyDictionary()  # graph node -> ModuleCall
        self._stack = []
        self._handles = []
        self._counts = collections.Counter()

    # --- recording -------------------------------------------------------------------------
    def __enter__(self):
        if self._handles:
            raise RuntimeError("viz.trace: this trace is already recording")
        for name, module in self.model.named_modules():
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(name)))
            self._handles.append(module.register_forward_hook(self._post_hook()))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for call in self._stack:  # a forward that raised leaves calls open
            call.input_nodes = set()
        self._stack = []
        return False

    def _pre_hook(self, name):
        def hook(module, args):
            self._counts[name] += 1
            parent = self._stack[-1] if self._stack else None
            call = ModuleCall(name, type(module).__name__, parent, self._counts[name])
            call.input_nodes = {t.grad_fn for t in _tensors_in(args) if t.grad_fn is not None}
            self.calls.append(call)
            self._stack.append(call)
        return hook

    def _post_hook(self):
        def hook(module, args, output):
            call = self._stack.pop()
            outputs = _tensors_in(output)
            call.output_shapes = [(t.shape, t.dtype) for t in outputs]
            self._claim(call, [t.grad_fn for t in outputs if t.grad_fn is not None])
            call.input_nodes = set()  # done: hold no graph alive
        return hook

    def _claim(self, call, roots):
        """Give ``call`` the unclaimed ops between its inputs and ``roots``; walk through
        ops claimed by its inner calls, stop at ops claimed by calls outside it."""
        seen, stack = set(), list(roots)
        while stack:
            node = stack.pop()
            if node in seen or node in call.input_nodes:
                continue
            seen.add(node)
            owner = self._owner.get(node)
            if owner is None:
                self._owner[node] = call
            elif not owner.is_within(call):
                continue  # made before this call began
            stack.extend(p for _, p, nr in _inputs(node) if nr is not None)

    # --- reading ---------------------------------------------------------------------------
    def owner(self, node):
        """The innermost module call that made graph node ``node`` (``tensor.grad_fn``), or
        ``None`` for an op made outside the model's modules."""
        return self._owner.get(node)

    def graph(self, output, depth=None, show_saved=True, params=None):
        """``graph(output, params, depth, show_saved, trace=self)``; ``params`` defaults to
        the traced model's ``named_parameters()``."""
        if params is None:
            params = dict(self.model.named_parameters())
        return graph(output, params=params, depth=depth, show_saved=show_saved, trace=self)


def trace(model):
    """A ``Trace`` of ``model``: run the forward pass inside ``with viz.trace(model) as t:``
    to draw the graph with one node per module (``t.graph(loss, depth=1)``)."""
    return Trace(model)


# ----------------------------------------------------------------------------- the graph

Node = collections.namedtuple("Node", ["id", "kind", "name", "label"])
Node.__doc__ = """One node of a ``Graph``: ``id`` (``n0``...), ``kind`` (``'op'``, ``'leaf'`` or
``'module'``), ``name`` (the op's name, the leaf's name or the module call's label) and
``label`` (the text drawn, lines separated by newlines)."""

_STYLE = {
    "op": 'shape=box, style="rounded"',
    "param": 'shape=box, style="filled", fillcolor="#dbeafe"',
    "input": 'shape=box, style="filled", fillcolor="#fef3c7"',
    "module": 'shape=box3d, style="filled", fillcolor="#e5e7eb"',
}


class Graph:
    """A drawn autograd graph: ``source`` (DOT text, also ``str(graph)``), ``nodes`` (a tuple
    of ``Node``), ``edges`` (a tuple of ``(from_id, to_id)`` in the forward direction) and
    ``saved_bytes`` (the total saved for backward by the ops drawn, ``None`` once freed)."""

    def __init__(self, nodes, edges, styles, outputs, saved_bytes):
        self.nodes = tuple(nodes)
        self.edges = tuple(edges)
        self.saved_bytes = saved_bytes
        lines = ["digraph minidl {",
                 '  graph [rankdir=TB, fontname="Helvetica"];',
                 '  node [fontname="Helvetica", fontsize=10];',
                 '  edge [arrowsize=0.7];']
        for node in self.nodes:
            attrs = f"label={_quote(node.label)}, {styles[node.id]}"
            if node.id in outputs:
                attrs += ", penwidth=2.5"
            lines.append(f"  {node.id} [{attrs}];")
        for a, b in self.edges:
            lines.append(f"  {a} -> {b};")
        lines.append("}")
        self.source = "\n".join(lines) + "\n"

    def __str__(self):
        return self.source

    def __repr__(self):
        kinds = collections.Counter(n.kind for n in self.nodes)
        plural = {"op": "ops", "leaf": "leaves", "module": "modules"}
        parts = ", ".join(f"{kinds[k]} {k if kinds[k] == 1 else plural[k]}"
                          for k in plural if kinds[k])
        n, e = len(self.nodes), len(self.edges)
        return (f"<minidl.viz.Graph: {n} node{'s' * (n != 1)} ({parts}), "
                f"{e} edge{'s' * (e != 1)}>")

    def save(self, path):
        """Write the DOT text to ``path`` (atomically: a temporary file, then a rename)."""
        _write_atomic(path, self.source.encode("utf-8"))
        return path

    def pipe(self, format="svg"):
        """The picture as bytes in ``format`` (``svg``, ``png``, ``pdf``...), drawn by Graphviz's
        ``dot``; a ``RuntimeError`` saying what to install when Graphviz is missing."""
        try:
            import graphviz
        except ImportError:
            raise RuntimeError(RENDER_HINT + " (the graphviz Python package is not "
                               "installed)") from None
        try:
            return graphviz.Source(self.source).pipe(format=format)
        except graphviz.ExecutableNotFound:
            raise RuntimeError(RENDER_HINT + " (Graphviz's `dot` program is not on "
                               "PATH)") from None

    def render(self, path, format=None):
        """Draw the graph into ``path``; the format comes from the suffix (``g.svg``,
        ``g.png``, ``g.pdf``) unless ``format`` is given. Returns ``path``."""
        if format is None:
            format = os.path.splitext(os.fspath(path))[1].lstrip(".").lower()
            if not format:
                raise ValueError(f"Graph.render: cannot tell the format from {path!r}; give "
                                 "a suffix (.svg, .png, .pdf) or format='svg'")
        _write_atomic(path, self.pipe(format))
        return path

    def _repr_svg_(self):
        """Jupyter's picture of the graph; ``None`` (the text repr) without Graphviz."""
        try:
            return self.pipe("svg").decode("utf-8")
        except RuntimeError:
            return None


def _write_atomic(path, data):
    """Write ``data`` to ``path`` all or nothing (``serialization.atomic_write``: a temporary
    file in the same folder, then ``os.replace``), so a reader never sees half a file."""
    with atomic_write(path) as fh:
        fh.write(data)


def walk(outputs):
    """Every op node and leaf tensor that ``outputs`` (Tensors) were computed from, producers
    before consumers: an iterative depth-first post-order from the outputs, following each
    op's inputs in order (so the order is the same every time)."""
    roots = [t.grad_fn if t.grad_fn is not None else t for t in outputs]
    order, expanded = [], set()
    stack = [(r, False) for r in reversed(roots)]
    while stack:
        item, inputs_done = stack.pop()
        if inputs_done:  # every input of item is in order: item follows them
            order.append(item)
            continue
        if id(item) in expanded:
            continue
        expanded.add(id(item))
        stack.append((item, True))
        for _, producer, _ in reversed(_inputs(item)):
            if id(producer) not in expanded:
                stack.append((producer, False))
    return order


def _as_outputs(output):
    outputs = list(output) if isinstance(output, (list, tuple)) else [output]
    if not outputs:
        raise ValueError("viz.graph: no output tensors given")
    for t in outputs:
        if not isinstance(t, Tensor):
            raise TypeError(f"viz.graph: output must be a Tensor or a list of Tensors, got "
                            f"{type(t).__name__}")
        if not t.requires_grad:
            raise ValueError(f"viz.graph: a tensor of shape {t.shape} has no graph: it does "
                             "not require grad (computed inside no_grad(), or only from "
                             "tensors that do not require grad)")
    return outputs


def graph(output, params=None, depth=None, show_saved=True, trace=None):
    """The autograd graph that produced ``output`` (a Tensor or a list of Tensors) as a
    ``Graph`` (DOT text in ``.source``).

    Args:
        output: the tensor(s) whose graph to draw, typically the loss.
        params: ``{name: tensor}`` naming the leaves, e.g. ``dict(net.named_parameters())``;
            other leaves that require grad are drawn as ``input``.
        depth: ``None`` for one node per op; an integer to draw one node per module call at
            that nesting depth (0: the whole model; 1: its children...). Needs ``trace``.
        show_saved: write the bytes each op saved for backward in its label.
        trace: the ``viz.trace(model)`` the forward pass ran inside (for ``depth``).
    """
    outputs = _as_outputs(output)
    if depth is not None:
        if trace is None:
            raise ValueError("viz.graph: depth= needs to know which module made each op: run "
                             "the forward pass inside `with viz.trace(model) as t:` and pass "
                             "trace=t (or call t.graph(output, depth=...))")
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
            raise ValueError(f"viz.graph: depth must be None or an integer >= 0, got {depth!r}")
    names = {id(t): name for name, t in (params or {}).items()}
    items = walk(outputs)
    output_items = {id(t.grad_fn if t.grad_fn is not None else t) for t in outputs}

    group_of = _groups(items, names, trace, depth) if depth is not None else {}

    # Node ids in walk order; a module call's node takes the place of its first member.
    ids, members, order = {}, collections.defaultdict(list), []
    for item in items:
        call = group_of.get(id(item))
        key = id(call) if call is not None else id(item)
        if key not in ids:
            ids[key] = f"n{len(order)}"
            order.append(call if call is not None else item)
        ids[id(item)] = ids[key]
        if call is not None:
            members[id(call)].append(item)

    nodes, styles = [], {}
    unnamed = [id(t) for t in items if not _is_node(t) and id(t) not in names]
    for entry in order:
        nid = ids[id(entry)]
        if isinstance(entry, ModuleCall):
            node, style = _module_node(nid, entry, members[id(entry)], show_saved)
        elif _is_node(entry):
            node, style = _op_node(nid, entry, show_saved)
        else:
            node = _leaf_node(nid, entry, names, unnamed)
            style = _STYLE["param" if id(entry) in names else "input"]
        nodes.append(node)
        styles[nid] = style

    edges, seen = [], set()
    for item in items:
        for _, producer, _ in _inputs(item):
            a, b = ids[id(producer)], ids[id(item)]
            if a == b:
                continue  # inside one module call's node
            if depth is not None:  # many ops between two module nodes: one edge
                if (a, b) in seen:
                    continue
                seen.add((a, b))
            edges.append((a, b))
    saved = _bytes_of([i for i in items if _is_node(i)])
    return Graph(nodes, edges, styles, {ids[k] for k in output_items}, saved)


def _groups(items, names, trace, depth):
    """{id(item): ModuleCall} for the items drawn inside a module call's node at ``depth``.

    An op goes into the call at ``depth`` that contains the call that made it (or into that
    call itself when it is shallower); ops of the model's own ``forward`` (depth 0) and ops
    made outside the model stay single, unless ``depth`` is 0. A named parameter goes into
    a call's node when every op that uses it is in there.
    """
    group_of = {}
    for item in items:
        if _is_node(item):
            call = trace.owner(item)
            if call is not None:
                call = call.at_depth(depth)
                if call.depth > 0 or depth == 0:
                    group_of[id(item)] = call
    homes = collections.defaultdict(set)  # leaf -> the groups (None: no group) of its users
    for item in items:
        for _, producer, _ in _inputs(item):
            homes[id(producer)].add(group_of.get(id(item)))
    for item in items:
        if not _is_node(item) and id(item) in names:
            users = homes[id(item)]
            if len(users) == 1 and None not in users:
                group_of[id(item)] = next(iter(users))
    return group_of


def _saved_line(ops):
    """The label line for the bytes ``ops`` saved: ``saved 1.2 MB``, ``saved: freed`` or
    none (an op that keeps nothing, such as an addition or a reshape)."""
    saved = _bytes_of(ops)
    if saved is None:
        return ["saved: freed"]
    return [f"saved {format_bytes(saved)}"] if saved else []


def _op_node(nid, node, show_saved):
    """(Node, style) of one op."""
    meta = _output_meta(node)
    lines = [node.name, ", ".join(_shape_text(s, d) for s, d in meta)]
    if show_saved:
        lines += _saved_line([node])
    return Node(nid, "op", node.name, "\n".join(lines)), _STYLE["op"]


def _leaf_node(nid, tensor, names, unnamed):
    """The Node of a leaf tensor: its name from ``params``, else ``input`` (numbered when the
    graph has several unnamed leaves)."""
    name = names.get(id(tensor))
    if name is None:
        name = "input" if len(unnamed) == 1 else f"input{unnamed.index(id(tensor))}"
    return Node(nid, "leaf", name, f"{name} {_shape_text(tensor.shape, tensor.dtype)}")


def _module_node(nid, call, items, show_saved):
    """(Node, style) of one module call drawn as one node."""
    ops = [i for i in items if _is_node(i)]
    params = [i for i in items if not _is_node(i)]
    lines = [call.label if call.label == call.module_type
             else f"{call.label}: {call.module_type}"]
    if call.output_shapes:
        lines.append(", ".join(_shape_text(s, d) for s, d in call.output_shapes))
    counts = f"{len(ops)} op" + ("s" if len(ops) != 1 else "")
    if params:
        n = sum(p.numel() for p in params)
        counts += (f", {len(params)} parameter tensor" + ("s" if len(params) != 1 else "")
                   + f" ({n:,} values)")
    lines.append(counts)
    if show_saved:
        lines += _saved_line(ops)
    return Node(nid, "module", call.label, "\n".join(lines)), _STYLE["module"]


from .cnn_maps import (FeatureMaps, Filters, Occlusion, Saliency,  # noqa: E402,F401
                       feature_maps, filters, occlusion, saliency)
