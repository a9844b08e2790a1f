"""The docs cannot rot: every Python block in them runs, its printed output is checked, and
every ``minidl.explain`` output shown is what the explainer prints today.

How a Markdown file is run (the convention the docs are written to)
-------------------------------------------------------------------
* Every fenced block opened with three backticks and ``python`` runs, in the order of the
  file, in ONE namespace per file, like the cells of a notebook: a name defined in one
  block is there in the next. The blocks run with the repository root as the working
  directory and NumPy's default print options (restored afterwards).
* A ``text`` block that follows a Python block with nothing but blank lines between them is
  that block's expected output: what the block prints (stdout) must equal it, line by line,
  after stripping trailing spaces from each line and blank lines at both ends. A Python
  block with no such ``text`` block may print anything; it must only not raise.
  (No ``>>>`` doctest prompts: a block reads like the code a learner types into a file.)
* ``<!-- needs: minidl.explain.max_pool2d -->`` on the line before a Python block: the
  block uses that name (documentation only: every block runs).
* A ``text`` block between ``<!-- explain: ... -->`` and ``<!-- /explain -->`` is an output
  of ``minidl.explain``, written by ``docs/regenerate.py``; ``test_explain_block_is_fresh``
  regenerates it in memory and fails, naming the block and the command to run, when it
  differs from the file.

A failing block's traceback points at the Markdown file and line (the code is compiled
with the file's name and its own line numbers).
"""
from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import io
import os
import pathlib
import re
import shlex
import traceback

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TUTORIAL = DOCS / "backprop_through_conv.md"
NOTEBOOK_FILES = [TUTORIAL, DOCS / "README.md"]     # Markdown files whose Python blocks run


def _load_regenerate():
    spec = importlib.util.spec_from_file_location("docs_regenerate", DOCS / "regenerate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


regenerate = _load_regenerate()


def _exists(dotted):
    """Whether ``package.module.attr`` can be imported / looked up."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


# ----------------------------------------------------------------------------- parsing

FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")
NEEDS = re.compile(r"^<!-- needs: (?P<names>[\w., ]+) -->\s*$")


class Fence:
    """A fenced block: its language, the 1-based line of its first code line, its code,
    the names it needs, whether it sits inside an explain block, and (for a Python block)
    the ``text`` block holding its expected output."""

    def __init__(self, path, lang, line, code, needs, in_explain):
        self.path, self.lang, self.line, self.code = path, lang, line, code
        self.needs, self.in_explain = needs, in_explain
        self.expected = None

    def id(self):
        return f"{self.path.name}:{self.line - 1}"


def fences(path):
    """Every top-level fenced block of a Markdown file, with each Python block's expected
    output attached (``Fence.expected``)."""
    lines = path.read_text(encoding="utf-8").split("\n")
    out, i, in_explain, previous = [], 0, False, ""
    prev_fence_end = None          # index of the line closing the last fence
    while i < len(lines):
        line = lines[i]
        if regenerate.OPEN.match(line):
            in_explain = True
        elif line.strip() == regenerate.CLOSE:
            in_explain = False
        m = FENCE.match(line)
        if not m:
            if line.strip():
                previous = line
            i += 1
            continue
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        if j == len(lines):
            raise ValueError(f"{path}:{i + 1}: a code block that is never closed")
        needs = []
        n = NEEDS.match(previous)
        if n:
            needs = [s.strip() for s in n.group("names").split(",") if s.strip()]
        f = Fence(path, m.group("lang"), i + 2, "\n".join(lines[i + 1:j]), needs, in_explain)
        gap = lines[prev_fence_end + 1:i] if prev_fence_end is not None else ["x"]
        if (f.lang == "text" and not in_explain and out and out[-1].lang == "python"
                and all(not g.strip() for g in gap)):
            out[-1].expected = f
        out.append(f)
        prev_fence_end, previous, i = j, "```", j + 1
    return out


def python_blocks(path):
    return [f for f in fences(path) if f.lang == "python"]


# ----------------------------------------------------------------------------- the notebook

class Notebook:
    """Runs a file's Python blocks in order in one namespace, each at most once, and keeps
    what each printed (or the error it raised, or why it was skipped)."""

    def __init__(self, path):
        self.path = path
        self.blocks = python_blocks(path)
        self.namespace = {"__name__": "__docs__"}
        self.results = {}          # line -> ('ok', stdout) | ('error', text) | ('skip', why)

    def result(self, block):
        for b in self.blocks:
            if b.line not in self.results:
                self.results[b.line] = self._run(b)
            if b.line == block.line:
                return self.results[b.line]
        raise KeyError(block.id())

    def _run(self, block):
        missing = [name for name in block.needs if not _exists(name)]
        if missing:
            return "skip", missing
        # line numbers of the Markdown file in tracebacks
        code = compile("\n" * (block.line - 1) + block.code, str(self.path), "exec")
        out, cwd = io.StringIO(), os.getcwd()
        try:
            os.chdir(ROOT)
            with np.printoptions(), contextlib.redirect_stdout(out):
                exec(code, self.namespace)                           # noqa: S102
        except Exception:                                            # noqa: BLE001
            return "error", out.getvalue() + traceback.format_exc()
        finally:
            os.chdir(cwd)
        return "ok", out.getvalue()


NOTEBOOKS = {}


def notebook(path):
    if path not in NOTEBOOKS:
        NOTEBOOKS[path] = Notebook(path)
    return NOTEBOOKS[path]


def normalised(text):
    return "\n".join(line.rstrip() for line in text.strip("\n").split("\n")).strip("\n")


# ----------------------------------------------------------------------------- the tests

PY_BLOCKS = [b for p in NOTEBOOK_FILES for b in python_blocks(p)]


@pytest.mark.parametrize("block", PY_BLOCKS, ids=[b.id() for b in PY_BLOCKS])
def test_python_block(block):
    """The block runs (after every block above it in its file) and prints its output."""
    status, got = notebook(block.path).result(block)
    if status == "skip":
        pytest.fail(f"{block.id()}: a block above it was skipped for {got}, so this one "
                    f"needs it too: add <!-- needs: {', '.join(got)} -->")
    assert status == "ok", f"{block.id()} raised:\n{got}"
    if block.expected is not None:
        want, have = normalised(block.expected.code), normalised(got)
        if want != have:
            diff = "\n".join(difflib.unified_diff(want.split("\n"), have.split("\n"),
                                                  "in the docs", "printed now", lineterm=""))
            pytest.fail(f"{block.id()}: the output block at line {block.expected.line - 1} "
                        f"differs from what the code prints:\n{diff}")


EXPLAIN_BLOCKS = [b for p in regenerate.FILES for b in regenerate.blocks(p)]


@pytest.mark.parametrize("block", EXPLAIN_BLOCKS, ids=[b.where().split("/")[-1]
                                                       for b in EXPLAIN_BLOCKS])
def test_explain_block_is_fresh(block):
    """The explain output in the docs is exactly what the explainer prints now."""
    new = regenerate.render(block.spec)
    if block.current != new:
        diff = "\n".join(difflib.unified_diff(block.current, new, "in the docs", "now",
                                              lineterm=""))
        pytest.fail(f"{block.where()}: the output of `{block.spec}` is stale; run "
                    f"python docs/regenerate.py\n{diff}")


def test_explain_blocks_are_there():
    """Each of the tutorial's topics shows an explain output; every block is a text fence."""
    ops = {b.op for b in EXPLAIN_BLOCKS}
    assert {"conv2d", "chain", "max_pool2d", "avg_pool2d", "batch_norm",
            "softmax_cross_entropy"} <= ops
    for b in EXPLAIN_BLOCKS:
        assert b.current[0] == "```text" and b.current[-1] == "```", b.where()


def test_regenerate_select_keeps_numbering():
    """--only keeps the command's own step numbers and marks what it cut."""
    e, shown, step, only = regenerate.explanation(
        "conv2d --input 1x1x3x3 --kernel 1x1x2x2 --step backward --only dW,col2im")
    assert shown.startswith("$ python -m minidl.explain conv2d --input 1x1x3x3")
    assert "--only" not in shown and step == "backward" and only == ["dW", "col2im"]
    text = regenerate.select(e.to_text(step="backward"), [s.key for s in e.steps
                                                          if s.phase == "backward"], only)
    heads = [line for line in text.split("\n") if line.startswith(("-- ", "[..."))]
    assert heads[0] == "[... step 1 not shown ...]"
    assert heads[1].startswith("-- 2. [backward] the weight gradient")
    assert heads[2] == "[... steps 3-4 not shown ...]"
    assert heads[3].startswith("-- 5. [backward] col2im")
    assert heads[4] == "[... steps 6-8 not shown ...]"
    assert text.rstrip().endswith("checked against autograd: max |diff| = 0")
    with pytest.raises(ValueError, match="no step nope"):
        regenerate.select(e.to_text(step="backward"), ["dY", "dW", "db", "dcol", "col2im",
                                                       "flip_dy", "flip_w", "flip_dx"],
                          ["nope"])


def test_staleness_is_detected(tmp_path):
    """A changed number in an explain block is found, and regenerating puts it back."""
    good = "\n".join(["# t", "<!-- explain: linear --input 1x2 --weight 1x2 --step forward -->",
                      *regenerate.render("linear --input 1x2 --weight 1x2 --step forward"),
                      "<!-- /explain -->", ""])
    path = tmp_path / "t.md"
    path.write_text(good.replace("checked against autograd", "checked against nothing"))
    new, changed, skipped = regenerate.regenerate(path)
    assert [b.line for b in changed] == [2] and not skipped and new == good
    assert regenerate.main(["--check", str(path)]) == 1
    assert regenerate.main([str(path)]) == 0 and path.read_text() == good
    assert regenerate.main(["--check", str(path)]) == 0


def test_runner_checks_output_and_needs(tmp_path):
    """The runner's convention on a small file: shared namespace, output compared, a text
    block after prose is not an output, needs parsed."""
    path = tmp_path / "n.md"
    path.write_text("\n".join([
        "```python", "a = 2", "```", "", "```python", "print(a * 3)", "```", "",
        "```text", "6", "```", "prose", "```text", "not an output", "```",
        "<!-- needs: minidl.explain.nothing_here -->", "```python", "print(1)", "```", ""]))
    blocks = python_blocks(path)
    assert [b.expected.code if b.expected else None for b in blocks] == [None, "6", None]
    assert blocks[2].needs == ["minidl.explain.nothing_here"]
    nb = Notebook(path)
    assert nb.result(blocks[1]) == ("ok", "6\n")
    assert nb.result(blocks[2]) == ("skip", ["minidl.explain.nothing_here"])
    assert _exists("minidl.explain.conv2d") and not _exists("minidl.explain.nothing_here")


# ----------------------------------------------------------------------------- links, README

LINK = re.compile(r"\]\((?P<target>[^)#\s]+)(#[^)]*)?\)")


@pytest.mark.parametrize("path", [TUTORIAL, DOCS / "README.md"], ids=lambda p: p.name)
def test_relative_links_resolve(path):
    """Every relative link of the docs points at a file or folder that exists."""
    text = path.read_text(encoding="utf-8")
    targets = [m.group("target") for m in LINK.finditer(text)
               if "://" not in m.group("target")]
    assert targets, f"{path.name} has no links"
    missing = [t for t in targets if not (path.parent / t).exists()]
    assert not missing, f"{path.name}: links to missing files: {missing}"


def readme_learning_section():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"^## Learning from minidl\n(?P<body>.*?)(?=^## )", text, re.S | re.M)
    assert m, "README.md has no '## Learning from minidl' section"
    return m.group("body")


def test_readme_learning_section(capsys):
    """What the README's "Learning from minidl" section gives a learner works: each
    `python -m minidl.explain...` command runs (in this process) with the exit status a
    learner sees on a fresh checkout (the exercise stubs: 1, not implemented yet), each
    Python block runs, and its links resolve."""
    from minidl.explain.__main__ import main as explain_main
    from minidl.explain.check import main as check_main

    body = readme_learning_section()
    commands = [line.strip() for block in re.findall(r"^```bash\n(.*?)^```", body, re.S | re.M)
                for line in block.split("\n") if line.strip().startswith("python ")]
    assert len(commands) >= 2, commands
    mains = {"minidl.explain": explain_main, "minidl.explain.check": check_main}
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        for command in commands:
            words = shlex.split(command)
            assert words[:2] == ["python", "-m"] and words[2] in mains, \
                f"the test does not know how to run {command!r}"
            status = mains[words[2]](words[3:])
            out = capsys.readouterr().out
            if words[2] == "minidl.explain":
                assert status == 0 and "checked against autograd" in out, command
            else:
                assert status == 1 and "NOT IMPLEMENTED YET" in out, command
        for code in re.findall(r"^```python\n(.*?)^```", body, re.S | re.M):
            exec(compile(code, "README.md (Learning from minidl)", "exec"), {})  # noqa: S102
        assert "digraph minidl" in capsys.readouterr().out
    finally:
        os.chdir(cwd)
    links = [m.group("target") for m in LINK.finditer(body)]
    assert links and all((ROOT / t).exists() for t in links), links
