"""minidl.viz: the DOT text parses, and its nodes and edges are the autograd graph's.

Two independent references:
- a small DOT parser (``parse_dot``) for the subset viz writes, so the tests run without
  pydot or Graphviz;
- ``autograd_graph``, a walk of the autograd graph written here (a set and a stack, no
  order), whose counts the DOT must reproduce; for LeNet the counts are also written out by
  hand from ``LeNet5.forward``.
"""
from __future__ import annotations

import collections
import os
import re
import shutil
import sys

import pytest

import minidl
from minidl import models, viz
from minidl.nn import functional as F

# ----------------------------------------------------------------------------- a DOT parser

_TOKEN = re.compile(r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<arrow>->)|(?P<id>[A-Za-z0-9_.#]+)'
                    r'|(?P<punct>[\[\]{}=,;]))')


def _tokens(text):
    pos, out = 0, []
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        assert m, f"DOT: cannot read {text[pos:pos + 30]!r}"
        kind = m.lastgroup
        value = m.group(kind)
        if kind == "str":  # unescape \" \\ and \n
            value = re.sub(r"\\(.)", lambda e: "\n" if e.group(1) == "n" else e.group(1),
                           value[1:-1])
        out.append((kind, value))
        pos = m.end()
    return out


def parse_dot(text):
    """``(nodes, edges)`` from ``digraph NAME { stmt; ... }`` where a statement is
    ``graph|node|edge [attrs]``, ``ID [attrs]`` or ``ID -> ID``. ``nodes``: {id: attrs}
    in order; ``edges``: [(a, b)]. Anything else fails the test."""
    toks = _tokens(text)
    i = 0

    def take(kind=None, value=None):
        nonlocal i
        assert i < len(toks), "DOT: unexpected end"
        k, v = toks[i]
        assert kind is None or k == kind, f"DOT: expected {kind}, got {v!r}"
        assert value is None or v == value, f"DOT: expected {value!r}, got {v!r}"
        i += 1
        return v

    def attrs():
        take("punct", "[")
        found = {}
        while toks[i] != ("punct", "]"):
            key = take("id")
            take("punct", "=")
            kind, value = toks[i]
            assert kind in ("id", "str"), f"DOT: bad value {value!r}"
            found[key] = take()
            if toks[i] == ("punct", ","):
                take()
        take("punct", "]")
        return found

    assert take("id") == "digraph"
    take("id")
    take("punct", "{")
    nodes, edges = {}, []
    while toks[i] != ("punct", "}"):
        name = take("id")
        if toks[i] == ("arrow", "->"):
            take()
            edges.append((name, take("id")))
        else:
            a = attrs()
            if name not in ("graph", "node", "edge"):
                assert name not in nodes, f"DOT: node {name} declared twice"
                nodes[name] = a
        take("punct", ";")
    take("punct", "}")
    assert i == len(toks), "DOT: text after the closing brace"
    for a, b in edges:
        assert a in nodes and b in nodes, f"DOT: edge {a} -> {b} to an undeclared node"
    return nodes, edges


def test_parse_dot_reads_the_subset_and_refuses_the_rest():
    nodes, edges = parse_dot('digraph g {\n node [shape=box];\n a [label="x \\"y\\"\\n(2,)"];'
                             '\n b [label=b];\n a -> b;\n}\n')
    assert nodes == {"a": {"label": 'x "y"\n(2,)'}, "b": {"label": "b"}}
    assert edges == [("a", "b")]
    with pytest.raises(AssertionError):
        parse_dot("digraph g { a -> b; }")  # undeclared nodes


# ----------------------------------------------------------------------------- the reference


def autograd_graph(output):
    """(op names as a Counter, number of leaves, number of edges) of the autograd graph
    behind ``output``: one edge per input of an op that requires grad."""
    ops, leaves, edges = collections.Counter(), set(), 0
    seen, stack = set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        ops[node.name] += 1
        for edge in node._edges:  # the test may read autograd's private attributes
            if edge is None:
                continue
            edges += 1
            producer, nr = edge
            if nr is None:
                leaves.add(id(producer))
            else:
                stack.append(producer)
    return ops, len(leaves), edges


def walk_nodes(output):
    """The autograd nodes behind ``output``."""
    seen, stack = [], [output.grad_fn]
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.append(node)
            stack += [e[0] for e in node._edges if e is not None and e[1] is not None]
    return seen


def op_names(nodes):
    """Counter of the op names (the first label line of every op node) in parsed DOT."""
    return collections.Counter(a["label"].split("\n")[0] for a in nodes.values()
                               if a.get("style") == "rounded")


def modules_drawn(nodes):
    """Labels' first words of the module nodes (``layer1``, ``max_pool#2``) in parsed DOT."""
    return [a["label"].split("\n")[0].split(":")[0] for a in nodes.values()
            if a.get("shape") == "box3d"]


# ----------------------------------------------------------------------------- LeNet

LENET_OPS = {"Conv2d": 2, "Tanh": 4, "MaxPool2d": 2, "Reshape": 1, "Linear": 3,
             "CrossEntropy": 1}  # LeNet5.forward: act(conv1), pool, act(conv2), pool,
                                 # reshape, act(fc1), act(fc2), fc3; then the loss


def lenet_loss(x_requires_grad=False, traced=False):
    minidl.manual_seed(0)
    net = models.lenet5()
    x = minidl.randn(2, 1, 32, 32).requires_grad_(x_requires_grad)
    y = minidl.tensor([3, 7])
    if not traced:
        return net, F.cross_entropy(net(x), y), None
    with viz.trace(net) as t:
        loss = F.cross_entropy(net(x), y)
    return net, loss, t


def test_lenet_graph_has_every_op_and_parameter():
    net, loss, _ = lenet_loss()
    g = viz.graph(loss, params=dict(net.named_parameters()))
    nodes, edges = parse_dot(str(g))
    ops, leaves, n_edges = autograd_graph(loss)

    assert op_names(nodes) == ops == LENET_OPS
    assert len(nodes) == sum(ops.values()) + leaves == 13 + 10
    # conv1 2 (the images need no grad), conv2 3, tanh 4, pool 2, reshape 1, linear 9, loss 1
    assert len(edges) == n_edges == 22
    assert list(nodes) == [f"n{i}" for i in range(len(nodes))]
    labels = [a["label"] for a in nodes.values()]
    for name, p in net.named_parameters():
        assert f"{name} {p.shape}" in labels
    assert "conv1.weight (6, 1, 5, 5)" in labels
    assert [n.kind for n in g.nodes].count("leaf") == 10
    assert g.edges == tuple(edges)


def test_lenet_edges_follow_the_forward_pass():
    net, loss, _ = lenet_loss()
    g = viz.graph(loss, params=dict(net.named_parameters()))
    name = {n.id: n.name for n in g.nodes}
    into = collections.defaultdict(list)
    for a, b in g.edges:
        into[name[b]].append(name[a])
    assert sorted(into["CrossEntropy"]) == ["Linear"]
    assert "conv1.weight" in into["Conv2d"] and "fc3.bias" in into["Linear"]
    order = [n.name for n in g.nodes if n.kind == "op"]  # producers before consumers
    assert order == ["Conv2d", "Tanh", "MaxPool2d", "Conv2d", "Tanh", "MaxPool2d", "Reshape",
                     "Linear", "Tanh", "Linear", "Tanh", "Linear", "CrossEntropy"]
    out = [n for n in nodes_with_attr(g, "penwidth")]
    assert out == ["CrossEntropy"]


def nodes_with_attr(g, attr):
    nodes, _ = parse_dot(g.source)
    return [a["label"].split("\n")[0] for a in nodes.values() if attr in a]


def test_saved_bytes_are_shown_and_freed_by_backward():
    net, loss, _ = lenet_loss()
    g = viz.graph(loss, params=dict(net.named_parameters()))
    tanh = [n.label for n in g.nodes if n.name == "Tanh"][0]
    assert tanh == "Tanh\n(2, 6, 28, 28)\nsaved 37.6 kB"  # y: 2*6*28*28 float32
    per_op, union = 0, {}
    for node in walk_nodes(loss):
        mine, stack = {}, list(node.saved_tensors)
        while stack:  # conv2d saves a tuple ('x', x)
            a = stack.pop()
            if isinstance(a, tuple):
                stack.extend(a)
            elif hasattr(a, "nbytes"):
                mine[id(a)] = a.nbytes
        per_op += sum(mine.values())
        union.update(mine)
    # the total counts each array once: tanh's output is also the next linear's input
    assert g.saved_bytes == sum(union.values()) < per_op
    assert "saved" not in viz.graph(loss, show_saved=False).source
    a = minidl.randn(3).requires_grad_()
    y = (a * a).sum()                  # (a small graph: LeNet's backward compiles kernels)
    # Mul saves (a, a): one array of 3 float32, counted once
    assert [n.label for n in viz.graph(y).nodes] == ["input (3,)", "Mul\n(3,)\nsaved 12 B",
                                                     "Sum\n()"]
    y.backward()
    after = viz.graph(y)
    assert [n.label for n in after.nodes if n.kind == "op"] == ["Mul\n(3,)\nsaved: freed",
                                                                "Sum\n()\nsaved: freed"]
    assert after.saved_bytes is None


def test_unnamed_leaves_are_inputs():
    net, loss, _ = lenet_loss(x_requires_grad=True)
    g = viz.graph(loss, params=dict(net.named_parameters()))
    assert "input (2, 1, 32, 32)" in [n.label for n in g.nodes]
    assert len(g.edges) == 23
    a = minidl.randn(3).requires_grad_()
    b = minidl.randn(3, dtype=minidl.float64).requires_grad_()
    g2 = viz.graph((a * a).sum() + (b * b).sum().float())
    labels = [n.label for n in g2.nodes if n.kind == "leaf"]
    assert labels == ["input0 (3,)", "input1 (3,) float64"]
    mul = [e for e in g2.edges if e[0] == "n0"]
    assert len(mul) == 2  # x * x: one edge per input


def test_the_same_graph_gives_the_same_text():
    a = viz.graph(lenet_loss()[1]).source
    b = viz.graph(lenet_loss()[1]).source
    assert a == b


def test_lenet_collapsed_to_modules():
    net, loss, t = lenet_loss(traced=True)
    g = t.graph(loss, depth=1)
    nodes, edges = parse_dot(g.source)
    # every module call is a node (max_pool ran twice); tanh and reshape are functional
    assert modules_drawn(nodes) == ["conv1", "max_pool", "conv2", "max_pool#2", "fc1", "fc2",
                                    "fc3"]
    assert op_names(nodes) == {"Tanh": 4, "Reshape": 1, "CrossEntropy": 1}
    assert len(nodes) == 13 and len(edges) == 12  # a chain; the parameters are inside
    assert "1 op, 2 parameter tensors (156 values)" in nodes["n0"]["label"]
    whole = t.graph(loss, depth=0)
    assert [n.name for n in whole.nodes] == ["LeNet5", "CrossEntropy"]
    assert "12 ops, 10 parameter tensors (61,706 values)" in whole.nodes[0].label
    assert whole.edges == (("n0", "n1"),)


def test_depth_needs_a_trace():
    net, loss, _ = lenet_loss()
    with pytest.raises(ValueError, match="viz.trace"):
        viz.graph(loss, depth=1)
    _, loss, t = lenet_loss(traced=True)
    with pytest.raises(ValueError, match="depth must be"):
        t.graph(loss, depth=-1)


def test_bad_outputs_are_refused():
    with pytest.raises(TypeError, match="viz.graph: output must be a Tensor"):
        viz.graph([1.0])
    with pytest.raises(ValueError, match="does not require grad"):
        viz.graph(minidl.randn(2))
    with pytest.raises(TypeError, match="viz.trace: model must be an nn.Module"):
        viz.trace(object())


def test_several_outputs_and_a_long_chain_without_recursion():
    x = minidl.randn(4).requires_grad_()
    y = x
    for _ in range(3 * sys.getrecursionlimit()):
        y = y * 1.0
    g = viz.graph([y, x * 2.0])
    assert len(g.nodes) == 3 * sys.getrecursionlimit() + 2
    assert nodes_with_attr(g, "penwidth") == ["Mul", "Mul"]


# ----------------------------------------------------------------------------- ResNet

RESNET18_OPS = {"Conv2d": 20, "BatchNorm": 20, "ReLU": 17, "Add": 8, "MaxPool2d": 1,
                "AdaptiveAvgPool2d": 1, "Reshape": 1, "Linear": 1}


@pytest.fixture(scope="module")
def resnet18_traced():
    minidl.manual_seed(0)
    net = models.resnet18().eval()
    x = minidl.randn(1, 3, 32, 32)
    with viz.trace(net) as t:
        out = net(x)
    return net, out, t


def test_resnet18_full_graph(resnet18_traced):
    net, out, t = resnet18_traced
    g = t.graph(out)
    nodes, edges = parse_dot(g.source)
    ops, leaves, n_edges = autograd_graph(out)
    assert op_names(nodes) == ops == RESNET18_OPS
    assert leaves == len(list(net.parameters())) == 62
    assert len(nodes) == 69 + 62 and len(edges) == n_edges
    assert "layer4.1.bn2.weight (512,)" in [a["label"] for a in nodes.values()]


def test_resnet18_one_node_per_child_at_depth_1(resnet18_traced):
    net, out, t = resnet18_traced
    g = t.graph(out, depth=1)
    nodes, edges = parse_dot(g.source)
    children = [name for name, _ in net.named_children()]
    assert modules_drawn(nodes) == children == ["conv1", "bn1", "relu", "maxpool", "layer1",
                                                "layer2", "layer3", "layer4", "avgpool", "fc"]
    assert op_names(nodes) == {"Reshape": 1}  # x.flatten(1) in ResNet.forward
    assert len(nodes) == 11
    ids = list(nodes)
    assert edges == list(zip(ids, ids[1:]))  # a chain, in forward order
    assert _ops_and_params(g) == (69 - 1, 62)


def test_resnet18_one_node_per_block_at_depth_2(resnet18_traced):
    net, out, t = resnet18_traced
    g = t.graph(out, depth=2)
    nodes, edges = parse_dot(g.source)
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert modules_drawn(nodes) == ["conv1", "bn1", "relu", "maxpool"] + blocks + [
        "avgpool", "fc"]
    assert len(nodes) == 15 and len(edges) == 14
    label = {n.name: n.label for n in g.nodes}
    assert "layer1.0: BasicBlock\n(1, 64, 8, 8)\n7 ops" in label["layer1.0"]
    assert "\n9 ops" in label["layer2.0"]  # the downsample's conv and batch norm
    assert _ops_and_params(g) == (68, 62)
    # one level further the blocks open up: relu runs twice in each block
    deeper = t.graph(out, depth=3)
    names = [n.name for n in deeper.nodes]
    assert "layer1.0.relu#2" in names and "layer2.0.downsample" in names
    assert _ops_and_params(deeper) == (68, 62)


def _ops_and_params(g):
    """(ops, parameter tensors) counted inside the module nodes of a collapsed graph."""
    ops = params = 0
    for n in g.nodes:
        if n.kind == "module":
            m = re.search(r"(\d+) ops?(?:, (\d+) parameter tensors?)?", n.label)
            ops += int(m.group(1))
            params += int(m.group(2) or 0)
    return ops, params


def test_resnet152_does_not_reach_the_recursion_limit():
    minidl.manual_seed(0)
    net = models.resnet152().eval()
    with viz.trace(net) as t:
        out = net(minidl.randn(1, 3, 32, 32))
    g = t.graph(out)
    ops, leaves, n_edges = autograd_graph(out)
    assert len(g.nodes) == sum(ops.values()) + leaves and len(g.edges) == n_edges
    assert ops["Conv2d"] == 155
    assert len([n for n in t.graph(out, depth=2).nodes if n.kind == "module"]) == 4 + 50 + 2


# ----------------------------------------------------------------------------- files

try:
    import graphviz  # noqa: F401
    HAVE_PACKAGE = True
except ImportError:
    HAVE_PACKAGE = False
HAVE_GRAPHVIZ = HAVE_PACKAGE and shutil.which("dot") is not None  # all render() needs


def test_save_writes_the_dot_text_atomically(tmp_path):
    g = viz.graph(lenet_loss()[1])
    path = tmp_path / "lenet.dot"
    assert g.save(path) == path
    assert path.read_text(encoding="utf-8") == g.source
    assert os.listdir(tmp_path) == ["lenet.dot"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would make it


@pytest.mark.skipif(not HAVE_GRAPHVIZ, reason="Graphviz (pip install graphviz; apt-get install "
                                              "graphviz) is not installed")
def test_render_svg_with_graphviz(tmp_path):
    net, loss, _ = lenet_loss()
    g = viz.graph(loss, params=dict(net.named_parameters()))
    path = g.render(tmp_path / "lenet.svg")
    text = path.read_text(encoding="utf-8")
    assert "<svg" in text and "conv1.weight (6, 1, 5, 5)" in text
    assert g._repr_svg_().count("<g id=\"node") == len(g.nodes)
    assert g.render(tmp_path / "lenet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="cannot tell the format"):
        g.render(tmp_path / "lenet")


@pytest.mark.skipif(HAVE_GRAPHVIZ, reason="Graphviz is installed: the rendering test runs")
def test_render_without_graphviz_says_what_to_install(tmp_path):
    """The no-Graphviz branch, as it is on this machine."""
    g = viz.graph(lenet_loss()[1])
    with pytest.raises(RuntimeError, match="rendering needs Graphviz: pip install graphviz "
                                           "and apt-get install graphviz"):
        g.render(tmp_path / "g.svg")
    assert g._repr_svg_() is None
    assert os.listdir(tmp_path) == []


def test_render_without_the_python_package_says_what_to_install(tmp_path, monkeypatch):
    """The no-Graphviz branch, made on any machine by hiding the graphviz package."""
    monkeypatch.setitem(sys.modules, "graphviz", None)  # `import graphviz` raises
    g = viz.graph(lenet_loss()[1])
    with pytest.raises(RuntimeError) as err:
        g.render(tmp_path / "g.svg")
    assert str(err.value).startswith(viz.RENDER_HINT)
    assert "the DOT text is in graph.source" in str(err.value)
    assert g._repr_svg_() is None


@pytest.mark.skipif(not HAVE_PACKAGE, reason="needs the graphviz Python package")
def test_render_without_the_dot_program_says_what_to_install(tmp_path, monkeypatch):
    """The no-Graphviz branch with the Python package but no ``dot`` on PATH."""
    monkeypatch.setenv("PATH", str(tmp_path))
    g = viz.graph(lenet_loss()[1])
    with pytest.raises(RuntimeError, match="`dot` program is not on PATH"):
        g.render(tmp_path / "g.svg")


# ----------------------------------------------------------------------------- trace details


class Tied(minidl.nn.Module):
    """Two linear layers sharing one weight, a shared activation module called twice and a
    functional op in the model's own forward."""

    def __init__(self):
        super().__init__()
        self.a = minidl.nn.Linear(4, 4)
        self.b = minidl.nn.Sequential(minidl.nn.Linear(4, 4), minidl.nn.Tanh())
        self.b[0].weight = self.a.weight
        self.act = minidl.nn.Tanh()

    def forward(self, x):
        h = self.act(self.a(x))
        return self.act(self.b(h) * 2.0)


def test_trace_shared_modules_and_parameters():
    net = Tied()
    with viz.trace(net) as t:
        out = net(minidl.randn(3, 4)).sum()
    assert [c.label for c in t.calls] == ["Tied", "a", "act", "b", "b.0", "b.1", "act#2"]
    g = t.graph(out, depth=1)
    names = [n.name for n in g.nodes]
    # the tied weight is used in a and in b: it stays a leaf; each bias goes inside
    assert names == ["a.weight", "a", "act", "b", "Mul", "act#2", "Sum"]
    assert ("n0", "n1") in g.edges and ("n0", "n3") in g.edges
    assert t.graph(out, depth=2).nodes[3].name == "b.0"
    assert t.owner(out.grad_fn) is None  # the sum ran outside the model


def test_a_trace_does_not_keep_the_graph_alive():
    import gc
    import weakref
    net = models.lenet5()
    with viz.trace(net) as t:
        out = net(minidl.randn(1, 1, 32, 32))
    node = weakref.ref(out.grad_fn)
    del out
    gc.collect()
    assert node() is None and len(t.calls) == 8
    with t:  # the hooks went away on exit and come back on the next entry
        net(minidl.randn(1, 1, 32, 32))
    net(minidl.randn(1, 1, 32, 32))
    assert len(t.calls) == 16
