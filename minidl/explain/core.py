"""The explanation object: a list of labelled steps, and the renderers that print it.

Every explainer (``conv.py``, ``linear.py``, ``chain.py``, and later the pooling, batch norm
and loss explainers) computes its numbers, checks them against autograd, and hands back an
``Explanation``: a header, a list of ``Step``s and the check's result. A renderer only
formats; it never computes. The pieces::

    Explanation                       one op (or one chain of ops) on one set of inputs
      .steps      [Step, ...]         in the order a learner reads them
      .arrays     {name: ndarray}     every array of every step, for tests and the HTML page
      .max_abs_diff                   largest |explainer - autograd| over the checked arrays
    Step                              one line of the derivation
      .key        'col', 'dW', ...    stable name (tests and the HTML page look steps up)
      .phase      'forward' | 'backward'
      .title, .formula                what the step does, and its formula in plain text
      .matrices   [Matrix, ...]       the numbers, each a labelled 2-D table
      .lines      [str, ...]          worked sums, the col2im scatter, notes
    Matrix                            a 2-D array with a label per row and per column
      .name, .values (R, K)           values None in a summary (shapes only)
      .rows, .cols [str]              e.g. '(c,kh,kw)' labels for im2col's rows
      .row_title, .col_title          what the labels mean: '(c,kh,kw)', '(n,oh,ow)'

A 4-D array (N, C, H, W) is shown as one Matrix per (n, c) plane (``planes``).

Renderers: ``to_text()`` (aligned columns, wide matrices wrapped into column blocks),
``to_markdown()`` (a table per matrix), ``to_latex()`` (a ``bmatrix`` per matrix, the labels
listed under it), ``to_html()`` and ``_repr_html_()`` (the interactive page of ``html.py``;
``to_html_tables()`` keeps the plain tables).
Each takes ``step='forward' | 'backward' | 'all'``.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Matrix", "Step", "Explanation", "planes", "fmt_number", "check_printable",
           "as_array", "draw", "PHASES"]

PHASES = ("forward", "backward", "all")


# ----------------------------------------------------------------------------- the pieces

@dataclass
class Matrix:
    """A labelled 2-D table of numbers (or, in a summary, only its shape).

    name: what it is (``'col (group 0)'``); values: a 2-D float64 array, or None in a
    summary; shape: the shape of the array it shows (for a plane of a 4-D array, the
    plane's); rows / cols: one label per row / column (None: plain indices);
    row_title / col_title: what the labels mean (``'(c,kh,kw)'``).
    """

    name: str
    values: np.ndarray | None
    shape: tuple
    rows: list | None = None
    cols: list | None = None
    row_title: str = ""
    col_title: str = ""

    @classmethod
    def of(cls, name, values, rows=None, cols=None, row_title="", col_title=""):
        """A Matrix of a 1-D (shown as one row) or 2-D array, labels by index by default."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim == 1:
            values = values[None, :]
        R, K = values.shape
        rows = [str(i) for i in range(R)] if rows is None else [str(r) for r in rows]
        cols = [str(j) for j in range(K)] if cols is None else [str(c) for c in cols]
        return cls(name, values, values.shape, rows, cols, row_title, col_title)

    @classmethod
    def shape_only(cls, name, shape, row_title="", col_title=""):
        return cls(name, None, tuple(int(s) for s in shape), None, None, row_title, col_title)


@dataclass
class Step:
    """One step of the derivation: a title, its formula, its matrices and text lines."""

    key: str
    phase: str
    title: str
    formula: str
    matrices: list = field(default_factory=list)
    lines: list = field(default_factory=list)


def planes(name, a, letters=("n", "c"), row_title="h", col_title="w"):
    """One Matrix per (n, c) plane of a 4-D array a (N, C, H, W), named ``name[n=0, c=1]``;
    rows labelled by h, columns by w. A 2-D array gives one Matrix."""
    a = np.asarray(a)
    if a.ndim == 2:
        return [Matrix.of(name, a, row_title=row_title, col_title=col_title)]
    out = []
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            out.append(Matrix.of(f"{name}[{letters[0]}={i}, {letters[1]}={j}]", a[i, j],
                                 row_title=row_title, col_title=col_title))
    return out


# ----------------------------------------------------------------------------- numbers

def fmt_number(v, decimals):
    """``3.0 -> '3'`` (decimals 0), ``-0.25 -> '-0.250'`` (decimals 3); never ``-0``."""
    s = f"{v:.{decimals}f}"
    if s.lstrip("-").strip("0.") == "":        # -0, -0.000
        s = s.lstrip("-")
    return s


def as_array(v, name, op):
    """A float64 NumPy copy of v (a NumPy array, a minidl Tensor, nested lists)."""
    if hasattr(v, "numpy") and callable(v.numpy):
        v = v.numpy()
    a = np.array(v, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"explain.{op}: {name} has non-finite values (inf or nan)")
    return a


def draw(shape, rng, values, high):
    """Values for an array given as a shape: integers in [-high, high] held in float64
    (``values='int'``: exact arithmetic, printable as integers), else standard normal."""
    if values == "int":
        return rng.integers(-high, high + 1, size=shape).astype(np.float64)
    return rng.standard_normal(shape)


def check_printable(op, sizes, *, hint=""):
    """Raise a ValueError when a geometry is too large to print.

    sizes: (label, value, limit) triples, e.g. ``('output height OH', 13, 12)``; every
    one over its limit is named in the message, which suggests smaller sizes or the
    shapes-only summary.
    """
    over = [f"{label} = {value} (at most {limit})" for label, value, limit in sizes
            if value > limit]
    if over:
        raise ValueError(
            f"explain.{op}: too large to print: " + "; ".join(over) + ". "
            + (hint + " " if hint else "")
            + "Use smaller sizes, or summary=True (--summary on the command line) for the "
              "shape of every step without numbers.")


# ----------------------------------------------------------------------------- the object

class Explanation:
    """A worked explanation of one op: labelled steps, checked against autograd.

    op: 'conv2d', 'linear', 'chain'...; header: lines describing the inputs and geometry;
    steps: the Steps; max_abs_diff: max |explainer - autograd| (None in a summary);
    decimals: digits after the point when printing (0 for integer values);
    arrays: {name: array} of every step (``explanation['dW']`` reads one);
    summary: True when only shapes were computed.
    geometry: the op's geometry where it has one (a ``ConvGeometry`` for conv2d and chain);
    scatter: conv2d's col2im contributions, ``{(n, c, i, j): [(row label, column label,
    value), ...]}`` (None for other ops).
    """

    def __init__(self, op, header, steps, max_abs_diff, decimals=0, arrays=None,
                 summary=False, geometry=None, scatter=None):
        self.op = op
        self.geometry = geometry
        self.scatter = scatter
        self.header = list(header)
        self.steps = list(steps)
        self.max_abs_diff = max_abs_diff
        self.decimals = decimals
        self.arrays = dict(arrays or {})
        self.summary = summary

    # --- access
    def step(self, key):
        """The Step with this key (KeyError naming the keys there are)."""
        for s in self.steps:
            if s.key == key:
                return s
        raise KeyError(f"no step {key!r}; steps: {[s.key for s in self.steps]}")

    def __getitem__(self, name):
        """An array by name: ``e['col']``, ``e['dX']`` (the keys of ``.arrays``)."""
        return self.arrays[name]

    def keys(self):
        return [s.key for s in self.steps]

    def _selected(self, step):
        if step not in PHASES:
            raise ValueError(f"step must be one of {PHASES}, got {step!r}")
        return [s for s in self.steps if step == "all" or s.phase == step]

    @property
    def check_line(self):
        """The last line of every rendering."""
        if self.summary or self.max_abs_diff is None:
            return "shapes only (summary): no numbers were computed, nothing to check"
        if 0 < self.max_abs_diff < 1e-12:
            # float64 rounding: its last bits differ between machines, so not printed
            return "checked against autograd: max |diff| < 1e-12 (float64 rounding)"
        return f"checked against autograd: max |diff| = {self.max_abs_diff:.3g}"

    def number(self, v):
        """One value as printed: an integer (decimals 0) or with 3 decimals."""
        return fmt_number(v, self.decimals)

    # --- text
    def __str__(self):
        return self.to_text()

    def __repr__(self):
        return (f"<Explanation {self.op}: {len(self.steps)} steps, "
                f"{self.check_line}>")

    def to_text(self, step="all", width=100):
        """Plain text: each step's title, formula, matrices (aligned, labelled; wrapped into
        column blocks at ``width`` characters) and lines; the check line last."""
        out = [f"== explain {self.op} =="] + self.header + [""]
        for i, s in enumerate(self._selected(step), 1):
            out.append(f"-- {i}. [{s.phase}] {s.title}")
            if s.formula:
                out += ["   " + line for line in s.formula.splitlines()]
            for m in s.matrices:
                out.append("")
                out += self._text_matrix(m, width)
            if s.lines:
                out.append("")
                out += ["   " + line for line in s.lines]
            out.append("")
        out.append(self.check_line)
        return "\n".join(out) + "\n"

    def _text_matrix(self, m, width):
        shape = "x".join(str(s) for s in m.shape)
        legend = ""
        if m.row_title or m.col_title:
            legend = f"  rows {m.row_title or 'index'}, columns {m.col_title or 'index'}"
        head = f"   {m.name}  ({shape}){legend}"
        if m.values is None:
            return [head]
        cells = [[self.number(v) for v in row] for row in m.values]
        rw = max(len(r) for r in m.rows)
        cw = max([len(c) for c in m.cols] + [len(x) for row in cells for x in row])
        per_block = max(1, (width - 4 - rw) // (cw + 1))
        lines = [head]
        K = len(m.cols)
        for start in range(0, K, per_block):
            stop = min(K, start + per_block)
            if K > per_block:
                lines.append(f"   columns {start}..{stop - 1}:")
            lines.append("    " + " " * rw + "".join(" " + c.rjust(cw)
                                                     for c in m.cols[start:stop]))
            for label, row in zip(m.rows, cells):
                lines.append("    " + label.rjust(rw)
                             + "".join(" " + x.rjust(cw) for x in row[start:stop]))
        return lines

    # --- markdown
    def to_markdown(self, step="all"):
        """Markdown: a heading per step, the formula in a code block, a table per matrix."""
        out = [f"## explain {self.op}", ""] + [f"    {h}" for h in self.header] + [""]
        for i, s in enumerate(self._selected(step), 1):
            out += [f"### {i}. {s.title} ({s.phase})", ""]
            if s.formula:
                out += ["```", s.formula, "```", ""]
            for m in s.matrices:
                shape = "x".join(str(v) for v in m.shape)
                out.append(f"**{m.name}** ({shape})")
                out.append("")
                if m.values is not None:
                    corner = f"{m.row_title} \\ {m.col_title}" if (m.row_title or m.col_title) \
                        else ""
                    out.append("| " + " | ".join([corner] + m.cols) + " |")
                    out.append("|" + "---|" * (len(m.cols) + 1))
                    for label, row in zip(m.rows, m.values):
                        out.append("| " + " | ".join([f"**{label}**"]
                                                     + [self.number(v) for v in row]) + " |")
                    out.append("")
            if s.lines:
                out += ["```"] + s.lines + ["```", ""]
        out.append(f"*{self.check_line}*")
        return "\n".join(out) + "\n"

    # --- latex
    def to_latex(self, step="all"):
        """LaTeX (amsmath): a ``\\paragraph`` per step, the formula verbatim, a ``bmatrix`` per
        matrix with its row and column labels listed under it."""
        def tex(s):
            return (s.replace("\\", r"\textbackslash{}").replace("_", r"\_")
                    .replace("#", r"\#").replace("%", r"\%").replace("&", r"\&")
                    .replace("{", r"\{").replace("}", r"\}").replace("^", r"\^{}")
                    .replace("$", r"\$"))
        out = [f"% explain {self.op} (needs \\usepackage{{amsmath}})",
               r"\noindent " + r" \\ ".join(r"\texttt{" + tex(h) + "}" for h in self.header)]
        for i, s in enumerate(self._selected(step), 1):
            out.append(rf"\paragraph{{{i}. {tex(s.title)} ({s.phase})}}")
            if s.formula:
                out.append(r"\begin{verbatim}" + "\n" + s.formula + "\n" + r"\end{verbatim}")
            for m in s.matrices:
                shape = r"\times".join(str(v) for v in m.shape)
                name = tex(m.name)
                if m.values is None:
                    out.append(rf"\[ \text{{{name}}} \in \mathbb{{R}}^{{{shape}}} \]")
                    continue
                body = " \\\\\n".join(" & ".join(self.number(v) for v in row) for row in m.values)
                out.append(rf"\[ \text{{{name}}} = \begin{{bmatrix}}" + "\n" + body + "\n"
                           + r"\end{bmatrix} \]")
                out.append(r"{\small rows " + tex(m.row_title or "index") + ": "
                           + ", ".join(tex(r) for r in m.rows) + r"; columns "
                           + tex(m.col_title or "index") + ": "
                           + ", ".join(tex(c) for c in m.cols) + r".}")
            if s.lines:
                out.append(r"\begin{verbatim}" + "\n" + "\n".join(s.lines) + "\n"
                           + r"\end{verbatim}")
        out.append(r"\paragraph{}" + tex(self.check_line))
        return "\n".join(out) + "\n"

    # --- html (plain tables; the interactive page is html.py's)
    def to_html_tables(self, step="all"):
        """A simple HTML fragment: a heading, formula and table per step (no script)."""
        e = html.escape
        out = [f"<div class='minidl-explain'><h3>explain {e(self.op)}</h3>",
               "<pre>" + e("\n".join(self.header)) + "</pre>"]
        for i, s in enumerate(self._selected(step), 1):
            out.append(f"<h4>{i}. {e(s.title)} ({s.phase})</h4>")
            if s.formula:
                out.append(f"<pre>{e(s.formula)}</pre>")
            for m in s.matrices:
                shape = "x".join(str(v) for v in m.shape)
                out.append(f"<p><b>{e(m.name)}</b> ({shape})</p>")
                if m.values is None:
                    continue
                corner = e(f"{m.row_title} \\ {m.col_title}") if (m.row_title or
                                                                  m.col_title) else ""
                rows = ["<tr><th>" + corner + "</th>"
                        + "".join(f"<th>{e(c)}</th>" for c in m.cols) + "</tr>"]
                for label, row in zip(m.rows, m.values):
                    rows.append(f"<tr><th>{e(label)}</th>"
                                + "".join(f"<td>{self.number(v)}</td>" for v in row) + "</tr>")
                out.append("<table border='1' style='border-collapse:collapse;"
                           "text-align:right'>" + "".join(rows) + "</table>")
            if s.lines:
                out.append("<pre>" + e("\n".join(s.lines)) + "</pre>")
        out.append(f"<p><i>{e(self.check_line)}</i></p></div>")
        return "\n".join(out)

    def to_html(self, step="all", title=None):
        """The interactive page (``html.py``): one self-contained HTML document."""
        from .html import page
        return page(self, title=title, step=step)

    def _repr_html_(self):
        """The interactive page as one ``<div>`` (style and script inside), for notebooks."""
        from .html import page
        return page(self, fragment=True)

    def render(self, format="text", step="all"):  # noqa: A002 - the CLI's word
        """The explanation as a string in ``format``: 'text', 'markdown', 'latex' or 'html'."""
        renderers = {"text": self.to_text, "markdown": self.to_markdown,
                     "latex": self.to_latex, "html": self.to_html}
        if format not in renderers:
            raise ValueError(f"format must be one of {sorted(renderers)}, got {format!r}")
        return renderers[format](step=step)
