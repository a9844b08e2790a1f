"""The interactive page: one self-contained HTML file for an ``Explanation``.

``page(explanation)`` returns a whole HTML document (inline CSS and JavaScript, nothing
fetched, no library), ``page(explanation, fragment=True)`` the same page as one ``<div>``
(what ``Explanation._repr_html_`` gives a notebook). Two parts:

1. **The explorer** (conv2d, and the conv2d part of ``chain``): the forward pass (padded
   input, im2col matrix, kernel matrix, output) beside the backward pass (dY, kernel, dcol,
   dX). Hovering over or clicking an output cell ``y[n,o,i,j]`` lights up its receptive
   window in the padded input (every input channel of its group), its column of the im2col
   matrix and row o of the kernel matrix, and writes the dot product out. Clicking a cell
   ``dX[n,c,i,j]`` lights up every dY entry and kernel weight that contributed to it and
   the dcol entries col2im adds up there (the col2im view), and writes the sum out.
2. **Every step**: the forward steps beside the backward steps, each with its formula, its
   labelled matrices and its worked lines (any Explanation: linear, chain, pooling...).

Which cells light up is decided here, in Python, from the conv geometry (the index formula
of im2col run forwards, the same one as the explainer's col2im scatter), and embedded in the
page as JSON: ``{cell id: {"hl": {role: [cell ids]}, "sum": text}}`` (``highlights``). The
script only adds and removes CSS classes, so a test can compare what the browser shows with
the geometry. Cell ids (n, c, o, i, j ... are plain indices; ``r`` is the row of the whole
im2col matrix, ``r = c*KH*KW + kh*KW + kw`` with c the channel of x; ``k`` its column,
``k = n*OH*OW + oh*OW + ow``)::

    xpad-n0-c1-h3-w2    padded input xpad[n, c, h, w]     (h, w in padded coordinates)
    col-r5-k3           im2col matrix col[(c,kh,kw), (n,oh,ow)]
    wm-o1-r5            kernel matrix Wm[o, (c,kh,kw)]
    y-n0-o1-i2-j0       output y[n, o, i, j]
    dy-n0-o1-i2-j0      upstream gradient dY[n, o, i, j]
    w-o1-c0-kh2-kw1     kernel w[o, c, kh, kw]            (c: the channel within o's group)
    dcol-r5-k3          dcol = Wm^T . dY, like col
    dx-n0-c1-h3-w2      input gradient dX[n, c, h, w]

Highlight roles (CSS class ``hl`` plus ``hl-<role>``; the clicked cell gets ``sel``):
``win`` (receptive window in xpad), ``col`` (column of col), ``wm`` (row of Wm), ``dy``,
``w``, ``dcol``.
"""
from __future__ import annotations

import html
import json

import numpy as np

__all__ = ["page", "highlights", "has_explorer", "ROLES"]

ROLES = ("win", "col", "wm", "dy", "w", "dcol")

# the arrays of a conv explanation the explorer shows
EXPLORER_ARRAYS = ("x_pad", "col", "Wm", "y", "dy", "w", "dcol", "dX")

esc = html.escape


# ----------------------------------------------------------------------------- geometry

def has_explorer(explanation):
    """True when the explanation carries a conv's geometry and numbers (conv2d, chain)."""
    geo = explanation.geometry
    return (not explanation.summary and geo is not None and hasattr(geo, "KH")
            and all(explanation.arrays.get(k) is not None for k in EXPLORER_ARRAYS))


def sizes(geo):
    """(Cg, OCg, KK = KH*KW, L = N*OH*OW) of a ConvGeometry."""
    return geo.C // geo.G, geo.OC // geo.G, geo.KH * geo.KW, geo.N * geo.OH * geo.OW


def window(geo, n, o, i, j):
    """[(c, kh, kw, h, w)]: the taps of output y[n, o, i, j]: channel c of x (o's group),
    kernel offset (kh, kw), padded position h = i*SH + kh*DH, w = j*SW + kw*DW."""
    Cg, OCg, _, _ = sizes(geo)
    g = o // OCg
    return [(c, kh, kw, i * geo.SH + kh * geo.DH, j * geo.SW + kw * geo.DW)
            for c in range(g * Cg, (g + 1) * Cg)
            for kh in range(geo.KH) for kw in range(geo.KW)]


def contributions(geo, n, c, i, j):
    """[(o, kh, kw, oh, ow)]: every (output channel, kernel offset, output position) whose
    window read x[n, c, i, j]: o in c's group, i = oh*SH + kh*DH - PH0 and
    j = ow*SW + kw*DW - PW0 for some output position (oh, ow) inside the output."""
    Cg, OCg, _, _ = sizes(geo)
    g = c // Cg
    out = []
    for kh in range(geo.KH):
        th = i + geo.PH0 - kh * geo.DH
        if th < 0 or th % geo.SH or th // geo.SH >= geo.OH:
            continue
        for kw in range(geo.KW):
            tw = j + geo.PW0 - kw * geo.DW
            if tw < 0 or tw % geo.SW or tw // geo.SW >= geo.OW:
                continue
            for o in range(g * OCg, (g + 1) * OCg):
                out.append((o, kh, kw, th // geo.SH, tw // geo.SW))
    return out


def row_index(geo, c, kh, kw):
    return (c * geo.KH + kh) * geo.KW + kw


def col_index(geo, n, oh, ow):
    return (n * geo.OH + oh) * geo.OW + ow


def highlights(explanation):
    """{cell id: {"hl": {role: [cell ids]}, "sum": text}} for every output cell y and every
    input-gradient cell dX of a conv explanation (module docstring); {} for other ops."""
    if not has_explorer(explanation):
        return {}
    e, geo, a = explanation, explanation.geometry, explanation.arrays
    f = e.number
    Cg, OCg, KK, _ = sizes(geo)
    b = a.get("b")
    cells = {}
    for n in range(geo.N):
        for o in range(geo.OC):
            g, ol = o // OCg, o % OCg
            for i in range(geo.OH):
                for j in range(geo.OW):
                    taps = window(geo, n, o, i, j)
                    k = col_index(geo, n, i, j)
                    rows = [row_index(geo, c, kh, kw) for c, kh, kw, _, _ in taps]
                    # row r of the whole col is row r - g*Cg*KK of group g's matrix
                    terms = [(a["Wm"][g, ol, r - g * Cg * KK], a["col"][g, r - g * Cg * KK, k])
                             for r in rows]
                    text = (f"y[{n},{o},{i},{j}] = sum over (c,kh,kw) of Wm[{o}, (c,kh,kw)] "
                            f"* col[(c,kh,kw), ({n},{i},{j})]"
                            + (f" + b[{o}]" if b is not None else "") + "\n   = "
                            + " + ".join(f"({f(wv)})({f(xv)})" for wv, xv in terms)
                            + (f" + ({f(b[o])})" if b is not None else "")
                            + f"\n   = {f(a['y'][n, o, i, j])}")
                    cells[f"y-n{n}-o{o}-i{i}-j{j}"] = {"hl": {
                        "win": [f"xpad-n{n}-c{c}-h{h}-w{w}" for c, _, _, h, w in taps],
                        "col": [f"col-r{r}-k{k}" for r in rows],
                        "wm": [f"wm-o{o}-r{r}" for r in rows]}, "sum": text}
    scatter = e.scatter
    for n in range(geo.N):
        for c in range(geo.C):
            g, cl = c // Cg, c % Cg
            for i in range(geo.H):
                for j in range(geo.W):
                    ts = contributions(geo, n, c, i, j)
                    entries = sorted({(row_index(geo, c, kh, kw), col_index(geo, n, oh, ow),
                                       f"dcol[({c},{kh},{kw}),({n},{oh},{ow})]")
                                      for _, kh, kw, oh, ow in ts})
                    if scatter is not None:   # the explainer's col2im list: the same entries
                        theirs = {(r, k) for r, k, _ in scatter[n, c, i, j]}
                        ours = {(f"({c},{kh},{kw})", f"({n},{oh},{ow})")
                                for _, kh, kw, oh, ow in ts}
                        assert theirs == ours, (f"explain html: dX[{n},{c},{i},{j}]: col2im "
                                                f"scatter {theirs} != geometry {ours}")
                    total = a["dX"][n, c, i, j]
                    products = [(a["w"][o, cl, kh, kw], a["dy"][n, o, oh, ow])
                                for o, kh, kw, oh, ow in ts]
                    assert abs(sum(p * q for p, q in products) - total) <= 1e-9 * max(
                        1.0, float(np.max(np.abs(a["dX"])))), "explain html: dX sum"
                    cell = f"dX[{n},{c},{i},{j}]"
                    if not ts:
                        text = f"no window reads x[{n},{c},{i},{j}], so {cell} = {f(total)}"
                    else:
                        # one line per dcol entry: its sum over the output channels o
                        lines, parts = [], []
                        for r, k, name in entries:
                            kh, kw = divmod(r % KK, geo.KW)
                            oh, ow = divmod(k % (geo.OH * geo.OW), geo.OW)
                            group_ts = [t for t in ts if t[1:] == (kh, kw, oh, ow)]
                            value = a["dcol"][g, r - g * Cg * KK, k]
                            parts.append(f"({f(value)})")
                            lines.append(
                                f"  {name} = " + " + ".join(
                                    f"w[{o},{cl},{kh},{kw}]*dY[{n},{o},{oh},{ow}]"
                                    for o, *_ in group_ts) + " = " + " + ".join(
                                    f"({f(a['w'][o, cl, kh, kw])})({f(a['dy'][n, o, oh, ow])})"
                                    for o, *_ in group_ts) + f" = {f(value)}")
                        text = "\n".join(
                            [f"{cell} = the sum of the {len(entries)} dcol entries im2col "
                             f"copied x[{n},{c},{i},{j}] into (col2im adds them back); each is "
                             f"w[o,{cl},kh,kw]*dY[n,o,oh,ow] summed over o in group {g}:"]
                            + lines + [f"{cell} = " + " + ".join(parts) + f" = {f(total)}"])
                    cells[f"dx-n{n}-c{c}-h{i}-w{j}"] = {"hl": {
                        "dy": [f"dy-n{n}-o{o}-i{oh}-j{ow}" for o, _, _, oh, ow in ts],
                        "w": [f"w-o{o}-c{cl}-kh{kh}-kw{kw}" for o, kh, kw, _, _ in ts],
                        "dcol": [f"dcol-r{r}-k{k}" for r, k, _ in entries]}, "sum": text}
    return cells


# ----------------------------------------------------------------------------- tables

def table(e, values, row_labels, col_labels, corner="", ids=None, classes=None, titles=None,
          interactive=False):
    """An HTML table of a 2-D array with a header row and column; ids / classes / titles:
    functions (r, k) -> str (or None) for each cell."""
    head = (f"<tr><th class='mx-corner'>{esc(corner)}</th>"
            + "".join(f"<th>{esc(str(c))}</th>" for c in col_labels) + "</tr>")
    body = []
    for r, (label, row) in enumerate(zip(row_labels, values)):
        tds = []
        for k, v in enumerate(row):
            attrs = ""
            if ids is not None:
                attrs += f" id='{ids(r, k)}'"
            cls = classes(r, k) if classes is not None else ""
            if cls:
                attrs += f" class='{cls}'"
            if titles is not None:
                attrs += f" title='{esc(titles(r, k))}'"
            if interactive:
                attrs += " data-x='1'"
            tds.append(f"<td{attrs}>{esc(e.number(v))}</td>")
        body.append(f"<tr><th>{esc(str(label))}</th>" + "".join(tds) + "</tr>")
    return "<table class='mx'>" + head + "".join(body) + "</table>"


def figure(caption, inner):
    return f"<figure><figcaption>{caption}</figcaption>{inner}</figure>"


def explorer(e, cells):
    """The interactive part: forward and backward panels with an id on every cell; cells:
    ``highlights(e)``."""
    geo, a = e.geometry, e.arrays
    Cg, OCg, KK, _ = sizes(geo)
    cols = [f"({n},{oh},{ow})" for n in range(geo.N) for oh in range(geo.OH)
            for ow in range(geo.OW)]

    def plane_tables(prefix, arr, letters, idfmt, classes=None, interactive=False, name=None):
        out = []
        for p in range(arr.shape[0]):
            for q in range(arr.shape[1]):
                ids = (lambda r, k, p=p, q=q: idfmt.format(p, q, r, k))
                title = (lambda r, k, p=p, q=q: f"{name or prefix}[{p},{q},{r},{k}]")
                cl = (lambda r, k, p=p, q=q: classes(p, q, r, k)) if classes else None
                out.append(figure(f"{esc(name or prefix)}[{letters[0]}={p}, {letters[1]}={q}]",
                                  table(e, arr[p, q], range(arr.shape[2]), range(arr.shape[3]),
                                        "", ids, cl, title, interactive)))
        return "<div class='mx-planes'>" + "".join(out) + "</div>"

    def group_tables(name, arr, rows_of, cols_of, corner, idfmt):
        out = []
        for g in range(geo.G):
            cap = f"{name} (group {g})" if geo.G > 1 else name
            out.append(figure(esc(cap), table(e, arr[g], rows_of(g), cols_of(g), corner,
                                              lambda r, k, g=g: idfmt(g, r, k))))
        return "<div class='mx-planes'>" + "".join(out) + "</div>"

    def rlabels(g):
        return [f"({g * Cg + c},{kh},{kw})" for c in range(Cg) for kh in range(geo.KH)
                for kw in range(geo.KW)]

    def olabels(g):
        return [str(g * OCg + o) for o in range(OCg)]

    def unread(n, c, h, w):      # a dX cell no window reads: its gradient is always 0
        return "" if cells[f"dx-n{n}-c{c}-h{h}-w{w}"]["hl"]["dcol"] else "unread"

    def padded(n, c, h, w):
        inside = geo.PH0 <= h < geo.PH0 + geo.H and geo.PW0 <= w < geo.PW0 + geo.W
        return "" if inside else "pad"

    def block(number, heading, formula, tables):
        """One numbered piece of a pass: heading, its formula, its tables."""
        return (f"<div class='mx-block'><h4><span class='mx-n'>{number}</span> {heading}</h4>"
                f"<p class='mx-f'>{formula}</p>{tables}</div>")

    pads = ((geo.PH0, geo.PH1), (geo.PW0, geo.PW1))
    bias = " + b[o]" if a.get("b") is not None else ""
    # the blocks are numbered in reading order; the small ones come first on the screen so
    # that the cell pointed at and the cells it lights up are seen together
    fwd = [
        block(1, "padded input xpad", f"x with zero rows {pads[0]} above/below, zero columns "
              f"{pads[1]} left/right (grey)",
              plane_tables("xpad", a["x_pad"], "nc", "xpad-n{0}-c{1}-h{2}-w{3}", padded)),
        block(4, "output y &mdash; point at a cell", f"y[n, o, oh, ow] = Wm[o] . "
              f"col[:, (n,oh,ow)]{bias}",
              plane_tables("y", a["y"], "no", "y-n{0}-o{1}-i{2}-j{3}", interactive=True)),
        block(2, "im2col: col", f"col[(c,kh,kw), (n,oh,ow)] = xpad[n, c, oh*{geo.SH} + "
              f"kh*{geo.DH}, ow*{geo.SW} + kw*{geo.DW}]",
              group_tables("col", a["col"], rlabels, lambda g: cols, "(c,kh,kw)",
                           lambda g, r, k: f"col-r{g * Cg * KK + r}-k{k}")),
        block(3, "the kernel as a matrix: Wm", "Wm[o, (c,kh,kw)] = w[o, c, kh, kw]",
              group_tables("Wm", a["Wm"], olabels, rlabels, "o",
                           lambda g, r, k: f"wm-o{g * OCg + r}-r{g * Cg * KK + k}")),
    ]
    bwd = [
        block(5, "upstream gradient dY", "dY[n, o, oh, ow] = dL/dy[n, o, oh, ow]",
              plane_tables("dY", a["dy"], "no", "dy-n{0}-o{1}-i{2}-j{3}")),
        block(8, "dX = col2im(dcol) &mdash; click a cell", "dX[n, c, i, j] = sum of dcol["
              f"(c,kh,kw), (n,oh,ow)] over oh*{geo.SH} + kh*{geo.DH} - {geo.PH0} = i, "
              f"ow*{geo.SW} + kw*{geo.DW} - {geo.PW0} = j",
              plane_tables("dX", a["dX"], "nc", "dx-n{0}-c{1}-h{2}-w{3}", unread,
                           interactive=True)),
        block(6, "kernel w", "w[o, c, kh, kw] (c counted within o's group)",
              plane_tables("w", a["w"], "oc", "w-o{0}-c{1}-kh{2}-kw{3}")),
        block(7, "dcol = Wm<sup>T</sup> . dY", "dcol[(c,kh,kw), (n,oh,ow)] = sum over o of "
              "Wm[o, (c,kh,kw)] * dY[o, (n,oh,ow)]",
              group_tables("dcol", a["dcol"], rlabels, lambda g: cols, "(c,kh,kw)",
                           lambda g, r, k: f"dcol-r{g * Cg * KK + r}-k{k}")),
    ]
    legend = "".join(
        f"<span class='mx-key'><span class='mx-sw {cls}'></span>{esc(text)}</span>"
        for cls, text in [
            ("sel", "the cell you point at"), ("hl-win", "its receptive window in xpad "
                                              "(every channel of the group)"),
            ("hl-col", "its column of col"), ("hl-wm", "row o of Wm"),
            ("hl-dy", "dY entries that reach dX"), ("hl-w", "kernel weights they meet"),
            ("hl-dcol", "dcol entries col2im adds"), ("pad", "zero padding")]
        + ([("unread", "x never read: dX = 0")]
           if any(unread(*ix) for ix in np.ndindex(a["dX"].shape)) else []))
    return (
        "<section class='mx-explorer'><h2>explore: point at an output cell y or click a cell "
        "of dX</h2>"
        f"<div class='mx-legend'>{legend}</div>"
        "<pre class='mx-info' aria-live='polite'>Hover over or click a cell of y (forward, "
        "block 4) or of dX (backward, block 8): the cells it is made of light up "
        "and the sum is written out here.</pre>"
        "<div class='mx-sides'><div class='mx-side mx-fwd'><h3>forward</h3><div "
        "class='mx-blocks'>" + "".join(fwd) + "</div></div><div class='mx-side mx-bwd'>"
        "<h3>backward</h3><div class='mx-blocks'>" + "".join(bwd) + "</div></div></div>"
        "</section>")


def step_cards(e, step):
    """Every selected step as a card: title, formula, matrices, lines; forward steps in the
    left column, backward steps in the right."""
    chosen = [s for s in e.steps if step == "all" or s.phase == step]
    sides = {"forward": [], "backward": []}
    for number, s in enumerate(chosen, 1):
        parts = [f"<h3><span class='mx-n'>{number}</span> {esc(s.title)}</h3>"]
        if s.formula:
            parts.append(f"<pre class='mx-formula'>{esc(s.formula)}</pre>")
        figs = []
        for m in s.matrices:
            shape = " x ".join(str(v) for v in m.shape)
            cap = f"{esc(m.name)} <span class='mx-shape'>({shape})</span>"
            if m.values is None:
                figs.append(figure(cap, ""))
                continue
            corner = f"{m.row_title} \\ {m.col_title}" if (m.row_title or m.col_title) else ""
            figs.append(figure(cap, table(e, m.values, m.rows, m.cols, corner)))
        if figs:
            parts.append("<div class='mx-planes'>" + "".join(figs) + "</div>")
        if s.lines:
            parts.append(f"<pre class='mx-lines'>{esc(chr(10).join(s.lines))}</pre>")
        sides.setdefault(s.phase, []).append(
            f"<article class='mx-step mx-{esc(s.phase)}' data-step='{esc(s.key)}'>"
            + "".join(parts) + "</article>")
    out = ["<section class='mx-steps'><h2>every step</h2><div class='mx-sides'>"]
    for phase in ("forward", "backward"):
        if sides[phase]:
            out.append(f"<div class='mx-side'><h3 class='mx-phase'>{phase}</h3>"
                       + "".join(sides[phase]) + "</div>")
    out.append("</div></section>")
    return "".join(out)


# ----------------------------------------------------------------------------- style, script

CSS = """
.minidl-page { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #212529;
  max-width: 1800px; margin: 0 auto; padding: 8px 16px; }
.minidl-page h1 { font-size: 22px; margin: 4px 0; }
.minidl-page h2 { font-size: 17px; margin: 18px 0 6px; border-bottom: 2px solid #dee2e6; }
.minidl-page h3 { font-size: 15px; margin: 8px 0 4px; }
.minidl-page h4 { font-size: 13px; margin: 10px 0 0; color: #343a40; }
.minidl-page pre { font: 12px/1.4 ui-monospace, "DejaVu Sans Mono", monospace;
  white-space: pre-wrap; margin: 4px 0; }
.minidl-page .mx-header { background: #f8f9fa; padding: 6px 10px; border-radius: 6px; }
.minidl-page .mx-check { display: inline-block; background: #d3f9d8; color: #2b8a3e;
  padding: 2px 10px; border-radius: 10px; font-weight: 600; }
.minidl-page .mx-sides { display: flex; gap: 16px; align-items: flex-start; }
.minidl-page .mx-side { flex: 1 1 0; min-width: 0; overflow-x: auto; }
.minidl-page .mx-fwd { border-top: 4px solid #f08c00; }
.minidl-page .mx-bwd { border-top: 4px solid #1c7ed6; }
.minidl-page .mx-f { font: 12px ui-monospace, monospace; color: #495057; margin: 0 0 2px; }
.minidl-page .mx-blocks { display: flex; flex-wrap: wrap; gap: 0 24px; }
.minidl-page .mx-block { max-width: 100%; overflow-x: auto; }
.minidl-page .mx-block .mx-f { max-width: 44ch; }
.minidl-page .mx-planes { display: flex; flex-wrap: wrap; gap: 4px 14px; }
.minidl-page figure { margin: 2px 0; }
.minidl-page figcaption { font: 12px ui-monospace, monospace; color: #495057; }
.minidl-page .mx-shape { color: #868e96; }
.minidl-page table.mx { border-collapse: collapse;
  font: 12px ui-monospace, "DejaVu Sans Mono", monospace; }
.minidl-page table.mx th { font-weight: normal; color: #868e96; padding: 1px 4px;
  font-size: 10px; }
.minidl-page table.mx td { border: 1px solid #ced4da; padding: 2px 5px; text-align: right;
  min-width: 18px; background: #fff; }
.minidl-page td.pad, .minidl-page .mx-sw.pad { background: #f1f3f5; color: #adb5bd; }
.minidl-page td.unread, .minidl-page .mx-sw.unread { color: #adb5bd; border-style: dashed; }
.minidl-page td[data-x] { cursor: pointer; }
.minidl-page td[data-x]:hover { outline: 2px solid #868e96; }
.minidl-page .sel { background: #ffe066 !important; color: #000; font-weight: 700;
  outline: 3px solid #e67700; outline-offset: -1px; }
.minidl-page .hl-win, .minidl-page .hl-col { background: #ffc078 !important; color: #000; }
.minidl-page .hl-wm { background: #b2f2bb !important; color: #000; }
.minidl-page .hl-dy { background: #a5d8ff !important; color: #000; }
.minidl-page .hl-w { background: #d0bfff !important; color: #000; }
.minidl-page .hl-dcol { background: #96f2d7 !important; color: #000; }
.minidl-page .mx-legend { display: flex; flex-wrap: wrap; gap: 4px 16px; font-size: 12px; }
.minidl-page .mx-sw { display: inline-block; width: 14px; height: 14px; margin-right: 4px;
  vertical-align: -2px; border: 1px solid #adb5bd; outline: none; }
.minidl-page .mx-info { position: sticky; top: 0; z-index: 1; background: #fff9db;
  border: 1px solid #fab005; border-radius: 6px; padding: 6px 10px;
  height: 11.5em; overflow-y: auto; }   /* fixed: pointing at a cell never moves the page */
.minidl-page .mx-step { border: 1px solid #dee2e6; border-radius: 6px; padding: 4px 10px;
  margin: 8px 0; overflow-x: auto; }
.minidl-page .mx-forward { border-left: 4px solid #f08c00; }
.minidl-page .mx-backward { border-left: 4px solid #1c7ed6; }
.minidl-page .mx-n { display: inline-block; min-width: 20px; text-align: center;
  background: #495057; color: #fff; border-radius: 10px; font-size: 12px; }
.minidl-page .mx-formula { background: #f8f9fa; padding: 4px 8px; }
.minidl-page .mx-lines { color: #495057; max-height: 18em; overflow: auto; }
.minidl-page .mx-phase { text-transform: uppercase; letter-spacing: 1px; color: #868e96; }
"""

JS = """
(function () {
  // Bind every explain page of this document not bound yet (a notebook may hold several).
  var roots = document.querySelectorAll('.minidl-page:not([data-bound])');
  Array.prototype.forEach.call(roots, function (root) {
    root.setAttribute('data-bound', '1');
    var holder = root.querySelector('script.mx-data');
    if (!holder) { return; }
    // computed in Python: {roles: [...], cells: {cell id: {hl: {role: [ids]}, sum: text}}}
    var data = JSON.parse(holder.textContent);
    var cells = {};                       // this page's cells by id, looked up once
    Array.prototype.forEach.call(root.querySelectorAll('td[id]'), function (td) {
      cells[td.id] = td;
    });
    var info = root.querySelector('.mx-info');
    var hint = info ? info.textContent : '';
    var lit = [];                         // the cells lit now
    var pinned = null;                    // the clicked cell: shown again when the mouse leaves

    function show(id) {
      lit.forEach(function (td) {         // switch the previous selection off
        td.classList.remove('sel', 'hl');
        data.roles.forEach(function (r) { td.classList.remove('hl-' + r); });
      });
      lit = [];
      var d = id && data.cells[id];
      if (!d) {                           // nothing chosen: the hint again
        if (info) { info.textContent = hint; }
        root.removeAttribute('data-selected');
        return;
      }
      cells[id].classList.add('sel');
      lit.push(cells[id]);
      Object.keys(d.hl).forEach(function (role) {   // win, col, wm or dy, w, dcol
        d.hl[role].forEach(function (cid) {
          var td = cells[cid];
          if (td) { td.classList.add('hl', 'hl-' + role); lit.push(td); }
        });
      });
      if (info) { info.textContent = d.sum; }
      root.setAttribute('data-selected', id);
    }

    function target(ev) {                 // the y or dX cell under the event, if any
      var td = ev.target.closest ? ev.target.closest('td[data-x]') : null;
      return td && root.contains(td) ? td : null;
    }
    root.addEventListener('mouseover', function (ev) {
      var td = target(ev); if (td) { show(td.id); }
    });
    root.addEventListener('mouseout', function (ev) {
      if (target(ev)) { show(pinned); }
    });
    root.addEventListener('click', function (ev) {  // click: keep it; click again: let go
      var td = target(ev); if (!td) { return; }
      pinned = pinned === td.id ? null : td.id;
      show(pinned || td.id);
    });
  });
})();
"""


def json_for_script(obj):
    """JSON safe inside a <script> element (no '<', '>' or '&' left as such)."""
    return (json.dumps(obj, separators=(",", ":"), sort_keys=True)
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


# ----------------------------------------------------------------------------- the page

def page(explanation, title=None, step="all", fragment=False):
    """The explanation as one self-contained HTML page (str).

    title: the page's heading (default ``'minidl.explain: <op>'``); step: 'forward',
    'backward' or 'all' (the steps listed; the explorer always shows both passes);
    fragment: True gives one ``<div class='minidl-page'>`` holding the style, the content
    and the script (for a notebook, ``_repr_html_``), False a whole document around it.
    Nothing is fetched: no external script, style sheet, font or image.
    """
    e = explanation
    if step not in ("forward", "backward", "all"):
        raise ValueError(f"step must be one of ('forward', 'backward', 'all'), got {step!r}")
    title = f"minidl.explain: {e.op}" if title is None else str(title)
    cells = highlights(e)
    parts = [f"<div class='minidl-page' data-op='{esc(e.op)}'>",
             f"<style>{CSS}</style>",
             f"<h1>{esc(title)}</h1>",
             f"<pre class='mx-header'>{esc(chr(10).join(e.header))}</pre>",
             f"<p><span class='mx-check'>{esc(e.check_line)}</span></p>"]
    if cells:
        parts.append(explorer(e, cells))
    parts.append(step_cards(e, step))
    if cells:
        data = {"roles": list(ROLES), "cells": cells}
        parts.append(f"<script type='application/json' class='mx-data'>{json_for_script(data)}"
                     "</script>")
        parts.append(f"<script>{JS}</script>")
    parts.append("</div>")
    body = "\n".join(parts)
    if fragment:
        return body
    return ("<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
            f"<title>{esc(title)}</title>\n</head>\n<body>\n{body}\n</body>\n</html>\n")
