"""Regenerate every ``minidl.explain`` output shown in the docs, in place.

    python docs/regenerate.py            # rewrite the blocks that changed, name them
    python docs/regenerate.py --check    # change nothing; exit 1 if a block is stale

The docs never hold an explain output typed by hand. Each one sits between two HTML
comments (invisible on the rendered page) that say how to make it::

    <!-- explain: conv2d --input 1x1x3x3 --kernel 1x1x2x2 --step backward --only dW,db -->
    ```text
    (written by this script)
    ```
    <!-- /explain -->

What follows ``explain:`` is one of two forms.

* Command-line form: the arguments of ``python -m minidl.explain`` (parsed by that
  command's own parser, so anything it accepts works here), plus one option of this
  script, ``--only KEY,KEY``: keep only those steps (``Explanation.keys()``; other steps
  are replaced by one ``[...]`` line, the numbering stays the command's own). The block
  starts with the command, so a reader can run it and see the full output.
* Python form, for explainers without command-line options (or to pass arrays):
  ``max_pool2d((1, 1, 4, 4), 2, stride=1) --step backward --only ...``: a call of
  ``minidl.explain.<op>`` with literal arguments, then the same two options.

An op that ``minidl.explain`` does not have (yet) is left as it is and reported as
skipped: the explainers are written on separate branches, and this script runs on each.

``tests/test_docs.py`` imports this file and fails, naming the block and this command,
when regenerating in memory would change the docs.
"""
from __future__ import annotations

import argparse
import ast
import pathlib
import re
import shlex
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:          # run as `python docs/regenerate.py` from anywhere
    sys.path.insert(0, str(ROOT))

import minidl.explain as ex                                   # noqa: E402
from minidl.explain.__main__ import build_parser, explain     # noqa: E402

# The files whose explain blocks this script maintains.
FILES = [ROOT / "docs" / "backprop_through_conv.md"]

OPEN = re.compile(r"^<!-- explain: (?P<spec>.+?) -->\s*$")
CLOSE = "<!-- /explain -->"
PYTHON_FORM = re.compile(r"^(?P<call>(?P<op>\w+)\(.*\))(?P<opts>(\s+--.*)?)$")


class Block:
    """One explain block of a file: its spec, where it is, and what it holds now."""

    def __init__(self, path, line, spec, start, stop, current):
        self.path = path          # the file
        self.line = line          # 1-based line of the opening comment
        self.spec = spec          # the text after 'explain:'
        self.start = start        # index of the first line after the opening comment
        self.stop = stop          # index of the closing comment
        self.current = current    # the lines between them, as in the file

    @property
    def op(self):
        m = PYTHON_FORM.match(self.spec)
        return m.group("op") if m else self.spec.split()[0]

    def where(self):
        return f"{_shown(self.path)}:{self.line}"


def _shown(path):
    """A path relative to the repository root when it is inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def blocks(path, text=None):
    """The explain blocks of a Markdown file, in order (a ValueError for an unclosed one)."""
    lines = (path.read_text(encoding="utf-8") if text is None else text).splitlines()
    out, i = [], 0
    while i < len(lines):
        m = OPEN.match(lines[i])
        if m:
            j = i + 1
            while j < len(lines) and lines[j].strip() != CLOSE:
                if OPEN.match(lines[j]):
                    break
                j += 1
            if j == len(lines) or lines[j].strip() != CLOSE:
                raise ValueError(f"{path}:{i + 1}: '<!-- explain: ... -->' without its "
                                 f"'{CLOSE}'")
            out.append(Block(path, i + 1, m.group("spec"), i + 1, j, lines[i + 1:j]))
            i = j
        i += 1
    return out


def available(op):
    """Whether ``minidl.explain`` has the explainer ``op`` (those written on other branches
    may not be merged yet)."""
    return callable(getattr(ex, op, None))


def _options(text):
    """(step, only) from '--step backward --only dW,db' (either may be missing)."""
    p = argparse.ArgumentParser(prog="explain block", add_help=False)
    p.add_argument("--step", choices=("forward", "backward", "all"), default="all")
    p.add_argument("--only", default=None)
    args = p.parse_args(shlex.split(text))
    return args.step, (args.only.split(",") if args.only else None)


def _literal_call(call):
    """(op, args, kwargs) of 'op(literal, ..., name=literal)'; only literals allowed."""
    node = ast.parse(call, mode="eval").body
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(f"expected a call like max_pool2d((1, 1, 4, 4), 2), got {call!r}")
    args = [ast.literal_eval(a) for a in node.args]
    kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    return node.func.id, args, kwargs


def explanation(spec):
    """(the Explanation, the command shown above it, step, only) for a block's spec."""
    m = PYTHON_FORM.match(spec)
    if m:
        op, args, kwargs = _literal_call(m.group("call"))
        step, only = _options(m.group("opts"))
        e = getattr(ex, op)(*args, **kwargs)
        shown = f">>> print(minidl.explain.{m.group('call')}" + \
            (f".to_text(step={step!r}))" if step != "all" else ")")
        return e, shown, step, only
    words = shlex.split(spec)
    only = None
    if "--only" in words:
        k = words.index("--only")
        only = words[k + 1].split(",")
        del words[k:k + 2]
    args = build_parser().parse_args(words)
    if args.format != "text" or args.out:
        raise ValueError(f"explain block {spec!r}: only the text format is shown in the docs "
                         f"(no --format, no --out)")
    shown = "$ python -m minidl.explain " + " ".join(shlex.quote(w) for w in words)
    return explain(args), shown, args.step, only


def select(text, keys, only):
    """The text rendering ``text`` of steps ``keys`` with only the steps in ``only`` kept:
    each run of left-out steps becomes one '[...]' line. The header and the check line stay."""
    lines = text.rstrip("\n").split("\n")
    starts = [i for i, line in enumerate(lines) if line.startswith("-- ")]
    if len(starts) != len(keys):
        raise ValueError(f"found {len(starts)} step headings for {len(keys)} steps")
    unknown = [k for k in only if k not in keys]
    if unknown:
        raise ValueError(f"--only {','.join(only)}: no step {', '.join(unknown)}; the steps "
                         f"are {', '.join(keys)}")
    out = lines[:starts[0]]
    bounds = starts + [len(lines) - 1]              # the last line is the check line
    skipped = []
    for n, key in enumerate(keys):
        if key in only:
            if skipped:
                out += [f"[... {_steps_word(skipped)} not shown ...]", ""]
                skipped = []
            out += lines[bounds[n]:bounds[n + 1]]
        else:
            skipped.append(n + 1)
    if skipped:
        out += [f"[... {_steps_word(skipped)} not shown ...]", ""]
    out.append(lines[-1])
    return "\n".join(out) + "\n"


def _steps_word(numbers):
    if len(numbers) == 1:
        return f"step {numbers[0]}"
    return f"steps {numbers[0]}-{numbers[-1]}"


def render(spec):
    """The lines that belong between a block's comments: a ```text fence holding the
    command and its output (trailing spaces stripped)."""
    e, shown, step, only = explanation(spec)
    text = e.to_text(step=step)
    if only:
        keys = [s.key for s in e.steps if step == "all" or s.phase == step]
        text = select(text, keys, only)
        shown += f"    # steps shown: {', '.join(only)}"
    body = [shown] + [line.rstrip() for line in text.rstrip("\n").split("\n")]
    return ["```text"] + body + ["```"]


def regenerate(path, text=None):
    """(the new text of the file, the changed Blocks, the skipped Blocks).

    Skipped: blocks whose op ``minidl.explain`` does not have; they are kept as they are.
    """
    text = path.read_text(encoding="utf-8") if text is None else text
    lines = text.split("\n")
    changed, skipped = [], []
    for b in reversed(blocks(path, text)):            # from the end: indices stay valid
        if not available(b.op):
            skipped.append(b)
            continue
        new = render(b.spec)
        if lines[b.start:b.stop] != new:
            lines[b.start:b.stop] = new
            changed.append(b)
    return "\n".join(lines), changed[::-1], skipped[::-1]


def main(argv=None):
    p = argparse.ArgumentParser(description="Regenerate the minidl.explain outputs in the "
                                            "docs (between <!-- explain: ... --> comments).")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 when a block is stale")
    p.add_argument("files", nargs="*", type=pathlib.Path, help=f"default: "
                   f"{', '.join(_shown(f) for f in FILES)}")
    args = p.parse_args(argv)
    stale = False
    for path in [f.resolve() for f in args.files] or FILES:
        new, changed, skipped = regenerate(path)
        for b in skipped:
            print(f"{b.where()}: skipped, minidl.explain has no {b.op} (yet)")
        for b in changed:
            print(f"{b.where()}: {'stale' if args.check else 'regenerated'}: {b.spec}")
        if changed and not args.check:
            path.write_text(new, encoding="utf-8")
        stale = stale or bool(changed)
        if not changed:
            print(f"{_shown(path)}: up to date ({len(blocks(path))} blocks)")
    return 1 if (stale and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
