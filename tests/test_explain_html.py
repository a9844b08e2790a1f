"""minidl.explain's interactive page: self-contained, every number on it, the cells it lights
up equal to the geometry's, checked first in the embedded data and then in a real browser
(headless Chromium driven by selenium: click an output cell and a dX cell, read back which
cells carry the highlight classes, compare with sets computed here from the convolution's
index formula, keep a screenshot).

The browser tests skip, with the reason, when Chromium, its driver or selenium is missing;
``MINIDL_SCREENSHOT_DIR`` (when set) receives a copy of each screenshot.
"""
from __future__ import annotations

import html
import html.parser
import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys

import pytest

import minidl.explain as ex
from minidl.explain.html import page

ROOT = pathlib.Path(__file__).resolve().parents[1]

# the example, and a non-square strided, dilated, grouped, unevenly padded one
EXAMPLE = dict(x=(1, 2, 5, 4), w=(3, 2, 3, 3), stride=2, padding=1)
GROUPED = dict(x=(1, 4, 7, 6), w=(4, 2, 2, 3), stride=(2, 1), padding=(1, 2), dilation=(2, 1),
               groups=2)
GEOMETRIES = [
    EXAMPLE,
    GROUPED,
    dict(x=(2, 2, 4, 5), w=(2, 1, 2, 2), stride=(1, 2), padding="valid", groups=2),
    dict(x=(1, 1, 5, 6), w=(2, 1, 2, 3), padding="same", dilation=(1, 2)),   # uneven padding
    dict(x=(1, 1, 7, 5), w=(1, 1, 1, 2), stride=(3, 2)),                     # rows never read
]


def explain(case, **kw):
    case = dict(case)
    return ex.conv2d(case.pop("x"), case.pop("w"), b=True, **case, **kw)


# ----------------------------------------------------------------------------- the truth

def geometry(case):
    """The sizes of a case, worked out here from PyTorch's rules (not from minidl)."""
    def pair(v):
        return (v, v) if isinstance(v, int) else tuple(v)
    (N, C, H, W), (OC, Cg, KH, KW) = case["x"], case["w"]
    SH, SW = pair(case.get("stride", 1))
    DH, DW = pair(case.get("dilation", 1))
    p = case.get("padding", 0)
    if p == "valid":
        p = 0
    if p == "same":             # PyTorch: the extra row / column of an even total goes last
        th, tw = DH * (KH - 1), DW * (KW - 1)
        PH0, PH1, PW0, PW1 = th // 2, th - th // 2, tw // 2, tw - tw // 2
    else:
        PH0 = PH1 = pair(p)[0]
        PW0 = PW1 = pair(p)[1]
    OH = (H + PH0 + PH1 - DH * (KH - 1) - 1) // SH + 1
    OW = (W + PW0 + PW1 - DW * (KW - 1) - 1) // SW + 1
    return dict(N=N, C=C, H=H, W=W, OC=OC, Cg=Cg, KH=KH, KW=KW, SH=SH, SW=SW, DH=DH, DW=DW,
                PH0=PH0, PW0=PW0, OH=OH, OW=OW, G=C // Cg)


def row(g, c, kh, kw):
    return (c * g["KH"] + kh) * g["KW"] + kw


def column(g, n, oh, ow):
    return (n * g["OH"] + oh) * g["OW"] + ow


def output_truth(g, n, o, i, j):
    """{role: ids} for output y[n, o, i, j]: its window in xpad (every channel of o's group),
    its column of col, row o of Wm."""
    grp = o // (g["OC"] // g["G"])
    taps = [(c, kh, kw) for c in range(grp * g["Cg"], (grp + 1) * g["Cg"])
            for kh in range(g["KH"]) for kw in range(g["KW"])]
    return {
        "win": {f"xpad-n{n}-c{c}-h{i * g['SH'] + kh * g['DH']}-w{j * g['SW'] + kw * g['DW']}"
                for c, kh, kw in taps},
        "col": {f"col-r{row(g, c, kh, kw)}-k{column(g, n, i, j)}" for c, kh, kw in taps},
        "wm": {f"wm-o{o}-r{row(g, c, kh, kw)}" for c, kh, kw in taps},
    }


def dx_truth(g, n, c, i, j):
    """{role: ids} for dX[n, c, i, j], by brute force over every output position and kernel
    offset: the dY entries and weights whose product reached x[n, c, i, j], and the dcol
    entries col2im adds there."""
    OCg = g["OC"] // g["G"]
    grp = c // g["Cg"]
    out = {"dy": set(), "w": set(), "dcol": set()}
    for o in range(grp * OCg, (grp + 1) * OCg):
        for oh in range(g["OH"]):
            for ow in range(g["OW"]):
                for kh in range(g["KH"]):
                    for kw in range(g["KW"]):
                        if (oh * g["SH"] + kh * g["DH"] - g["PH0"] == i
                                and ow * g["SW"] + kw * g["DW"] - g["PW0"] == j):
                            out["dy"].add(f"dy-n{n}-o{o}-i{oh}-j{ow}")
                            out["w"].add(f"w-o{o}-c{c - grp * g['Cg']}-kh{kh}-kw{kw}")
                            out["dcol"].add(f"dcol-r{row(g, c, kh, kw)}-k{column(g, n, oh, ow)}")
    return out


def value_after_last_equals(text):
    return float(text.rsplit("=", 1)[1].split()[0])


# ----------------------------------------------------------------------------- parsing

class PageParser(html.parser.HTMLParser):
    """Checks that every element is closed in order; collects ids, tables (td texts),
    the embedded JSON and anything that would load from elsewhere."""

    VOID = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.ids, self.tables, self.loads = [], [], [], [], []
        self.data_json, self.in_td, self.in_data = None, False, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag not in self.VOID:
            self.stack.append(tag)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        for name in ("src", "href"):
            if name in attrs:
                self.loads.append(f"<{tag} {name}={attrs[name]!r}>")
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag == "td":
            self.in_td = True
            self.tables[-1][-1].append("")
        elif tag == "script" and attrs.get("type") == "application/json":
            self.in_data = True

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()
        self.in_td = self.in_td and tag != "td"
        self.in_data = self.in_data and tag != "script"

    def handle_data(self, data):
        if self.in_td:
            self.tables[-1][-1][-1] += data
        if self.in_data:
            self.data_json = json.loads(data)


def parse(text):
    p = PageParser()
    p.feed(text)
    p.close()
    assert not p.errors and not p.stack, (p.errors, p.stack)
    return p


# ----------------------------------------------------------------------------- without a browser

@pytest.mark.parametrize("make", [
    lambda: explain(EXAMPLE), lambda: explain(GROUPED),
    lambda: ex.linear((2, 3), (4, 3), b=True),
    lambda: ex.chain((1, 1, 6, 6), (2, 1, 3, 3), pool=2),
    lambda: explain(EXAMPLE, summary=True),
], ids=["conv2d", "conv2d-grouped", "linear", "chain", "summary"])
def test_page_is_self_contained_well_formed_and_shows_every_number(make):
    e = make()
    text = page(e)
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    for word in ("http://", "https://", "src=", "<link", "url(", "@import", "fetch(",
                 "XMLHttpRequest"):
        assert word not in text, f"the page would load something: {word!r}"
    p = parse(text)
    assert not p.loads, p.loads
    assert len(p.ids) == len(set(p.ids)), "duplicate ids"
    tables = {tuple(tuple(r) for r in t if r) for t in p.tables}
    shown = 0
    for s in e.steps:
        assert html.escape(s.title) in text
        for m in s.matrices:
            if m.values is not None:
                grid = tuple(tuple(e.number(v) for v in r) for r in m.values)
                assert grid in tables, f"step {s.key}: matrix {m.name} is not on the page"
                shown += 1
    assert shown or e.summary
    assert e.check_line in text


@pytest.mark.parametrize("case", GEOMETRIES, ids=lambda c: "x{}-w{}".format(
    "x".join(map(str, c["x"])), "x".join(map(str, c["w"]))))
def test_embedded_highlights_equal_the_geometry_for_every_cell(case):
    e = explain(case)
    g = geometry(case)
    assert (g["OH"], g["OW"]) == e["y"].shape[2:]
    p = parse(page(e))
    cells = p.data_json["cells"]
    ids = set(p.ids)
    expected = {}
    for n in range(g["N"]):
        for o in range(g["OC"]):
            for i in range(g["OH"]):
                for j in range(g["OW"]):
                    expected[f"y-n{n}-o{o}-i{i}-j{j}"] = output_truth(g, n, o, i, j)
        for c in range(g["C"]):
            for i in range(g["H"]):
                for j in range(g["W"]):
                    expected[f"dx-n{n}-c{c}-h{i}-w{j}"] = dx_truth(g, n, c, i, j)
    assert set(cells) == set(expected)
    for cid, truth in expected.items():
        got = {role: set(v) for role, v in cells[cid]["hl"].items()}
        assert got == truth, cid
        assert cid in ids and all(v in ids for vs in truth.values() for v in vs), cid
        kind, n, a, b, c = cid.split("-")
        index = (int(n[1:]), int(a[1:]), int(b[1:]), int(c[1:]))
        want = e["y"][index] if kind == "y" else e["dX"][index]
        assert value_after_last_equals(cells[cid]["sum"]) == pytest.approx(want)
    # a cell no window reads says so (stride 3 over a 1-row kernel skips rows)
    if case.get("stride") == (3, 2):
        assert "no window reads" in cells["dx-n0-c0-h1-w0"]["sum"]


def test_repr_html_render_and_to_html_give_the_page():
    e = explain(EXAMPLE)
    frag = e._repr_html_()
    assert frag == page(e, fragment=True)
    assert frag.startswith("<div class='minidl-page'") and "<script>" in frag
    assert frag in e.to_html() and e.render("html") == e.to_html() == page(e)
    assert "<title>my conv</title>" in page(e, title="my conv")
    assert e.to_html_tables().count("<table") == sum(
        1 for s in e.steps for m in s.matrices if m.values is not None)   # still there
    back = e.to_html(step="backward")
    assert "data-step='dW'" in back and "data-step='col'" not in back
    with pytest.raises(ValueError, match="step must be one of"):
        page(e, step="sideways")


def test_cli_writes_the_page_atomically_and_prints_it(tmp_path):
    out = tmp_path / "page.html"
    args = ["conv2d", "--input", "1x2x5x4", "--kernel", "3x2x3x3", "--stride", "2",
            "--padding", "1", "--format", "html"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "minidl.explain", *args, "--out", str(out)],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"wrote {out}"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["page.html"]   # no temp file left
    assert out.read_text(encoding="utf-8") == explain(EXAMPLE).to_html()
    r = subprocess.run([sys.executable, "-m", "minidl.explain", "linear", "--input", "2x3",
                        "--weight", "4x3", "--format", "html"], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("<!DOCTYPE html>") and "minidl.explain: linear" in r.stdout


# ----------------------------------------------------------------------------- in a browser

SKIP = "needs headless Chromium: install chromium chromium-driver (apt) and selenium (pip)"


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module, driven by the system's chromedriver (selenium
    must not download one)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip(f"selenium is not installed: {SKIP}")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
    if not chromium or not driver_path:
        pytest.skip(f"chromium or chromedriver not found: {SKIP}")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1600,1200", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    yield driver
    driver.quit()


def open_page(browser, e, path):
    path.write_text(page(e), encoding="utf-8")
    browser.get(path.as_uri())
    assert browser.execute_script(
        "return document.querySelector('.minidl-page').hasAttribute('data-bound')")


def lit(browser):
    """{'sel': [...], 'all': [...], role: [...]}: what carries the classes now."""
    roles = ["win", "col", "wm", "dy", "w", "dcol"]
    script = ("var roles = arguments[0]; var out = {sel: [], all: []};"
              "roles.forEach(function (r) { out[r] = []; });"
              "document.querySelectorAll('.minidl-page td.sel').forEach(function (td) {"
              "  out.sel.push(td.id); });"
              "document.querySelectorAll('.minidl-page td.hl').forEach(function (td) {"
              "  out.all.push(td.id);"
              "  roles.forEach(function (r) {"
              "    if (td.classList.contains('hl-' + r)) { out[r].push(td.id); } }); });"
              "return out;")
    return browser.execute_script(script, roles)


def info_text(browser):
    return browser.execute_script("return document.querySelector('.mx-info').textContent")


def click(browser, cell_id):
    from selenium.webdriver.common.by import By
    browser.find_element(By.ID, cell_id).click()


def assert_lit(browser, cell_id, truth):
    got = lit(browser)
    assert got["sel"] == [cell_id]
    assert set(got["all"]) == set().union(*truth.values())
    for role, ids in truth.items():
        assert set(got[role]) == ids, role
    for role in {"win", "col", "wm", "dy", "w", "dcol"} - set(truth):
        assert got[role] == [], role


def screenshot(browser, path):
    """Save the window as a PNG at path and, when MINIDL_SCREENSHOT_DIR is set, there too;
    check it is a PNG of the window's size with something on it."""
    assert browser.save_screenshot(str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 800 and height >= 600 and len(data) > 20_000, (width, height, len(data))
    keep = os.environ.get("MINIDL_SCREENSHOT_DIR")
    if keep:
        os.makedirs(keep, exist_ok=True)
        shutil.copyfile(path, os.path.join(keep, path.name))


@pytest.mark.parametrize("case,y_cell,dx_cell", [
    (EXAMPLE, (0, 1, 1, 0), (0, 1, 3, 1)),
    (GROUPED, (0, 3, 2, 5), (0, 2, 3, 1)),        # group 1: channels 2, 3 and outputs 2, 3
], ids=["example", "grouped-dilated"])
def test_clicks_light_up_exactly_the_cells_of_the_geometry(browser, tmp_path, case, y_cell,
                                                           dx_cell):
    e = explain(case)
    g = geometry(case)
    open_page(browser, e, tmp_path / "page.html")
    assert lit(browser)["all"] == []

    y_id = "y-n{}-o{}-i{}-j{}".format(*y_cell)
    click(browser, y_id)
    truth = output_truth(g, *y_cell)
    assert len(truth["win"]) == g["Cg"] * g["KH"] * g["KW"]
    assert_lit(browser, y_id, truth)
    assert value_after_last_equals(info_text(browser)) == pytest.approx(e["y"][y_cell])

    dx_id = "dx-n{}-c{}-h{}-w{}".format(*dx_cell)
    click(browser, dx_id)
    truth = dx_truth(g, *dx_cell)
    assert len(truth["dcol"]) >= 2           # a cell where several windows overlap
    assert_lit(browser, dx_id, truth)
    text = info_text(browser)
    assert text.startswith("dX[{},{},{},{}] = the sum".format(*dx_cell))
    assert value_after_last_equals(text) == pytest.approx(e["dX"][dx_cell])
    # the dcol entries named in the sum are the ones lit
    named = {s.split(" = ")[0].strip() for s in text.splitlines()[1:-1]}
    assert len(named) == len(truth["dcol"])
    name = f"explain_page_{'example' if case is EXAMPLE else 'grouped'}.png"
    screenshot(browser, tmp_path / name)

    click(browser, dx_id)                    # a second click lets go of the cell
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    ActionChains(browser).move_to_element(browser.find_element(By.TAG_NAME, "h1")).perform()
    assert lit(browser)["all"] == []


def test_hover_shows_a_cell_and_leaving_it_returns_to_the_clicked_one(browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    e = explain(EXAMPLE)
    g = geometry(EXAMPLE)
    open_page(browser, e, tmp_path / "page.html")
    click(browser, "dx-n0-c0-h2-w2")
    ActionChains(browser).move_to_element(browser.find_element(By.ID, "y-n0-o2-i0-j1")).perform()
    assert_lit(browser, "y-n0-o2-i0-j1", output_truth(g, 0, 2, 0, 1))
    ActionChains(browser).move_to_element(browser.find_element(By.TAG_NAME, "h1")).perform()
    assert_lit(browser, "dx-n0-c0-h2-w2", dx_truth(g, 0, 0, 2, 2))


def test_a_notebook_cell_with_two_pages_keeps_them_apart(browser, tmp_path):
    """_repr_html_ twice in one document (as a notebook shows it): each page lights up only
    its own cells."""
    e1, e2 = explain(EXAMPLE), explain(GROUPED)
    doc = ("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
           + e1._repr_html_() + e2._repr_html_() + "</body></html>")
    path = tmp_path / "notebook.html"
    path.write_text(doc, encoding="utf-8")
    browser.get(path.as_uri())
    pages = browser.execute_script("return document.querySelectorAll('.minidl-page').length")
    assert pages == 2
    cell = browser.execute_script(
        "var td = document.querySelectorAll('.minidl-page')[1]"
        ".querySelector('#y-n0-o0-i0-j0'); td.scrollIntoView({block: 'center'}); "
        "td.click(); return document.querySelectorAll('.minidl-page')[0]"
        ".querySelectorAll('.hl').length")
    assert cell == 0
    second = browser.execute_script("return document.querySelectorAll('.minidl-page')[1]"
                                    ".querySelectorAll('.hl').length")
    assert second == sum(len(v) for v in output_truth(geometry(GROUPED), 0, 0, 0, 0).values())
