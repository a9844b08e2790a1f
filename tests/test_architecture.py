"""The architecture, checked from the source: imports point down, tools use public names.

Read with ``ast`` (nothing is imported or run). Two rules:

1. **No upward import** inside the ``minidl`` package. Every module belongs to a layer;
   a module may import from its own layer or a lower one. Lowest first:

   ====  ========  ======================================================================
   rank  layer     modules (a package stands for every module under it)
   ====  ========  ======================================================================
   0     base      ``backend`` (the only place that knows NumPy from CuPy), ``geometry``,
                   ``errors``
   1     kernels   ``kernels/*``: array-level, no Tensor, so nothing from autograd up
   2     autograd  ``autograd`` (Tensor, Function, backward), ``random`` (the seeded
                   generators), ``creation`` (tensor factories), ``serialization``
                   (save/load of tensors; ``data.idx`` reads files with it)
   3     ops       ``ops/*``, ``tensor_methods`` (attaches the ops to Tensor),
                   ``linalg`` (``torch.linalg``'s names for ops' norms)
   4     nn        ``nn/*``
   5     optim     ``optim/*``
   6     data      ``data/*``
   7     models    ``models/*``
   8     tools     ``summary``, ``gradcheck``, ``metrics``, ``cuda``, ``explain/*``,
                   ``viz``, ``cnn_maps``, ``distributed/*``
   9     face      ``minidl/__init__.py`` (the public face: imports everything)
   ====  ========  ======================================================================

   That is ARCHITECTURE.md's picture, ``models -> nn -> ops -> kernels -> backend`` with
   ``autograd`` below ``ops`` and the tools on top, made total so that every module has a
   place. An import counts whether relative or absolute, at module level or inside a
   function (a lazy import is still a dependency). ``from minidl import X`` inside the
   package imports the face, which is upward for every module. A module the table does
   not place fails the test: add it to ``LAYERS``. Imports spelled as strings
   (``importlib.import_module``) are not seen.

2. **No private names** in the tools ``minidl/summary.py``, ``minidl/viz.py``,
   ``minidl/cnn_maps.py``, ``minidl/explain/*.py`` and in ``examples/*.py`` (they are what a
   learner copies, and a tool that reaches into a layer breaks when the layer changes):
   no import of an underscore name or module of minidl (``from minidl.x import _y``,
   ``from minidl._x import y``), and no read of an underscore attribute (``obj._attr``;
   dunders such as ``__name__`` are fine) on anything but ``self``/``cls``. The check
   cannot know an object's type, so it is stricter than "private to minidl": it flags
   every such read in those files, theirs included; they have none of their own.
"""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "minidl"

LAYERS = {
    "backend": 0, "geometry": 0, "errors": 0,
    "kernels": 1,
    "autograd": 2, "random": 2, "creation": 2, "serialization": 2,
    "ops": 3, "tensor_methods": 3,
    "nn": 4,
    "optim": 5,
    "data": 6,
    "models": 7,
    "summary": 8, "gradcheck": 8, "metrics": 8, "cuda": 8, "explain": 8, "viz": 8,
    "cnn_maps": 8,  # viz's CNN pictures (feature maps, filters, saliency, occlusion)
    "distributed": 8,
    "utils": 6, "vision": 7, "backends": 8,  # torch.utils.data's / torchvision's paths; flags
    "": 9,  # minidl/__init__.py
}
LAYERS["linalg"] = 3  # minidl.linalg: the norms of ops/math.py under torch.linalg's names
LAYER_NAMES = {0: "base", 1: "kernels", 2: "autograd", 3: "ops", 4: "nn", 5: "optim",
               6: "data", 7: "models", 8: "tools", 9: "face"}


# ----------------------------------------------------------------------------- the checker


def module_name(path, package_dir=PACKAGE):
    """``minidl/nn/module.py`` -> ``minidl.nn.module``; a package's ``__init__`` -> the
    package."""
    parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(package_dir=PACKAGE):
    """{module name: path} of every .py file in the package."""
    return {module_name(p, package_dir): p for p in sorted(package_dir.rglob("*.py"))}


def layer_of(module):
    """The rank of ``minidl.a.b.c``: the longest placed prefix (``a.b.c``, ``a.b``, ``a``),
    or None when the table does not place it."""
    parts = module.split(".")[1:]
    if not parts:
        return LAYERS[""]
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return LAYERS[key]
    return None


def imported_modules(tree, module, is_package, known):
    """(line, text, target module) for every import of minidl in ``tree``.

    Relative imports are resolved against ``module``; ``from P import name`` targets the
    module ``P.name`` when that is a module of the package (``known``), else ``P``.
    """
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "minidl":
                    found.append((node.lineno, f"import {alias.name}", alias.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "minidl":
                continue
            dots = "." * node.level + (node.module or "")
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                target = sub if sub in known else source
                found.append((node.lineno, f"from {dots} import {alias.name}", target))
    return found


def upward_imports(source, module, is_package=False, known=()):
    """The upward imports in ``source`` (the text of module ``module``), as messages."""
    rank = layer_of(module)
    if rank is None:
        return [f"{module}: not placed in any layer (add it to LAYERS in "
                f"tests/test_architecture.py)"]
    problems = []
    for line, text, target in imported_modules(ast.parse(source), module, is_package,
                                               set(known)):
        target_rank = layer_of(target)
        if target_rank is None:
            problems.append(f"{module}:{line}: `{text}` imports {target}, which no layer "
                            f"places")
        elif target_rank > rank:
            problems.append(f"{module}:{line}: `{text}` imports {target} "
                            f"({LAYER_NAMES[target_rank]}, layer {target_rank}) from "
                            f"{LAYER_NAMES[rank]} (layer {rank}): an upward import")
    return problems


def _private(name):
    return name.startswith("_") and not name.startswith("__")


def private_uses(source, where, package="minidl"):
    """Imports of private minidl names and reads of private attributes (not on self/cls)
    in ``source``, as messages. ``package``: the package of ``source`` when it is inside
    minidl (for relative imports)."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "minidl" and any(_private(p) for p in parts):
                    problems.append(f"{where}:{node.lineno}: `import {alias.name}`: a "
                                    f"private module of minidl")
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: inside minidl (precise enough for a name check)
                source_mod = ".".join([package] + ([node.module] if node.module else []))
            else:
                source_mod = node.module or ""
            if source_mod.split(".")[0] != "minidl":
                continue
            dots = "." * node.level + (node.module or "")
            if any(_private(p) for p in source_mod.split(".")):
                problems.append(f"{where}:{node.lineno}: `from {dots} import ...`: a private "
                                f"module of minidl")
            for alias in node.names:
                if _private(alias.name):
                    problems.append(f"{where}:{node.lineno}: `from {dots} import "
                                    f"{alias.name}`: a private name of minidl")
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if owner not in ("self", "cls"):
                problems.append(f"{where}:{node.lineno}: `{ast.unparse(node)}` reads a "
                                f"private attribute")
    return problems


# ----------------------------------------------------------------------------- the package


def test_every_module_is_placed_and_no_import_points_up():
    modules = package_modules()
    assert "minidl.autograd" in modules and "minidl.nn.module" in modules
    problems = []
    for name, path in modules.items():
        problems += upward_imports(path.read_text(encoding="utf-8"), name,
                                   path.name == "__init__.py", modules)
    assert not problems, ("imports against the layering (tests/test_architecture.py's "
                          "docstring has the table):\n  " + "\n  ".join(problems))


def test_summary_and_examples_use_public_names_only():
    files = [PACKAGE / "summary.py", PACKAGE / "viz.py", PACKAGE / "cnn_maps.py"] + sorted(
        (PACKAGE / "explain").glob("*.py")) + sorted((ROOT / "examples").glob("*.py"))
    problems = []
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        problems += private_uses(path.read_text(encoding="utf-8"), rel)
    assert not problems, "private names used:\n  " + "\n  ".join(problems)


# ----------------------------------------------------------------------------- the checker


KNOWN = {"minidl", "minidl.backend", "minidl.autograd", "minidl.nn", "minidl.nn.module",
         "minidl.ops", "minidl.ops.conv", "minidl.kernels", "minidl.kernels.im2col",
         "minidl.geometry", "minidl.models"}


@pytest.mark.parametrize("source,module,count", [
    ("from ..nn import Module\n", "minidl.kernels.im2col", 1),           # relative, upward
    ("def f():\n    from minidl.ops import conv\n", "minidl.kernels.im2col", 1),  # lazy
    ("import minidl.models\n", "minidl.nn.module", 1),                   # absolute module
    ("from minidl import Tensor\n", "minidl.ops.conv", 1),               # the face
    ("from .. import autograd\n", "minidl.kernels.im2col", 1),           # kernels < autograd
    ("from .. import backend, geometry\nfrom ..backend import xp\n", "minidl.kernels.im2col",
     0),
    ("from ..autograd import Tensor\nfrom ..kernels import im2col\n", "minidl.ops.conv", 0),
    ("from . import module\nfrom ..ops import conv\n", "minidl.nn", 0),  # a package's own
    ("from .models import resnet\n", "minidl", 0),                       # the face: anything
    ("import numpy\n", "minidl.newtool", 1),                             # not placed
])
def test_checker_reports_seeded_upward_imports(source, module, count):
    problems = upward_imports(source, module, module in ("minidl", "minidl.nn"), KNOWN)
    assert len(problems) == count, problems
    if count:
        assert module in problems[0]


def test_checker_reports_seeded_private_names():
    source = ("from minidl.nn.layers.conv import _explicit\n"
              "from minidl.kernels._fast import kernel\n"
              "import minidl._secret\n"
              "def rule(m):\n"
              "    m._ranks\n"
              "    return m.padding, m.__dict__, self._mine\n")
    problems = private_uses(source, "summary.py")
    assert len(problems) == 4, problems
    assert any("_explicit" in p for p in problems) and any("m._ranks" in p for p in problems)
    assert private_uses("from ._helpers import x\n", "minidl/summary.py") != []
    assert private_uses("import _common\n_common.main()\n", "examples/x.py") == []
