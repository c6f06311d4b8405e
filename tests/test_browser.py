"""The HTML report in a real browser: headless Chromium renders it, offline.

The page is ``tracer.report(path).to_html()`` of a small trace: the summary, the findings,
the plots, then every step, all of it from one HTML writer with one stylesheet. Chromium
runs twice: once to dump the DOM (with a small probe script that records layout boxes and script errors), once for a
screenshot tall enough to hold the whole page. The test checks that the page loaded
without errors, that formulas and plots are visible (their screen regions are not blank),
and that hostile module names are shown as text, never run.

The screenshot and the page are kept under the test's tmp_path, and copied to
``$TRACER_ARTIFACTS`` when that variable is set. Skipped when Chromium is not installed
(``apt-get install chromium``; ``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import tracer

pytest.importorskip("matplotlib", reason="the plots need matplotlib (the 'plots' extra)")
Image = pytest.importorskip("PIL.Image", reason="reading the screenshot needs Pillow (a matplotlib dependency)")

HOSTILE = ("<script>throw 1</script>", "<img src=x onerror=undefinedFn()>", "x&amp;y")

WIDTH = 1200

_PROBE = """
<script>
window.__errors = [];
window.addEventListener("error", function (e) { window.__errors.push(String(e.message || e.type)); }, true);
</script>
"""

_MEASURE = """
<script>
(function () {
  function boxes(selector) {
    return Array.prototype.map.call(document.querySelectorAll(selector), function (el) {
      var r = el.getBoundingClientRect();
      return [Math.round(r.left), Math.round(r.top + window.scrollY), Math.round(r.width), Math.round(r.height)];
    });
  }
  var out = {
    height: Math.ceil(document.documentElement.scrollHeight),
    formulas: boxes(".rule"),
    plots: boxes("figure.tracer-plot svg"),
    findings: boxes(".tracer-findings table"),
    scripts: document.scripts.length,
    images: document.images.length,
    text: document.body.innerText,
    errors: window.__errors
  };
  var pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  pre.hidden = true;
  document.body.appendChild(pre);
})();
</script>
"""


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def hostile_model():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module(HOSTILE[0], nn.Linear(2, 3))
    model.add_module(HOSTILE[1], nn.ReLU())
    model.add_module(HOSTILE[2], nn.Linear(3, 1))
    return model.double()


def build_page(path: Path) -> str:
    """The report page, with the probe scripts of this test added."""
    page = tracer.report(path).to_html()
    assert 1 == page.count("<style")  # one stylesheet for the report, the findings and the plots
    assert page.index("tracer-findings") < page.index("tracer-plots") < page.index("Step 0")
    return page.replace("<head>", "<head>" + _PROBE, 1).replace("</body>", _MEASURE + "</body>", 1)


def run_chromium(binary: str, tmp_path: Path, page: Path, *extra: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # no network, whatever the page asks
        "--force-device-scale-factor=1",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ]
    return subprocess.run(
        [binary, *flags, *extra, page.as_uri()],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "HOME": str(tmp_path)},
    )


def region_stats(pixels, box) -> dict[str, int]:
    """Pixels of a screen region: dark ones (text, lines) and coloured ones (plot colours)."""
    x, y, w, h = box
    region = pixels[max(0, y) : y + h, max(0, x) : x + w].astype(int)
    dark = region.sum(axis=2) < 3 * 128
    coloured = region.max(axis=2) - region.min(axis=2) > 60
    return {"dark": int(dark.sum()), "coloured": int(coloured.sum()), "total": int(dark.size)}


@pytest.fixture(scope="module")
def browser():
    binary = chromium()
    if binary is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    return binary


def test_report_page_in_headless_chromium(browser, tmp_path):
    model = hostile_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = x.sum(dim=1, keepdim=True)
    with tracer.trace(model, optimizer, path=tmp_path / "trace") as run:
        for _ in range(6):
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()

    html = build_page(run.path)
    page = tmp_path / "report.html"
    page.write_text(html, encoding="utf-8")
    # self-contained: nothing to fetch (data: URIs and in-page anchors only)
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html)
    assert all(ref.startswith(("data:", "#")) for ref in refs), [r for r in refs if not r.startswith(("data:", "#"))]
    assert "<link" not in html and "@import" not in html

    dumped = run_chromium(browser, tmp_path, page, f"--window-size={WIDTH},2000", "--dump-dom")
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    match = re.search(r'<pre id="probe" hidden="">(.*?)</pre>', dumped.stdout, re.DOTALL)
    assert match, dumped.stdout[-2000:]
    probe = json.loads(
        match.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")
    )

    # loaded without errors: no script error, no console error
    assert [] == probe["errors"]
    console = [line for line in dumped.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert [] == console

    # hostile names are text: shown verbatim, nothing ran, nothing was injected
    assert 2 == probe["scripts"]  # the two probe scripts of this test, no other
    assert 0 == probe["images"]
    for name in HOSTILE:
        assert name in probe["text"]

    shot = tmp_path / "report.png"
    # tall enough for everything checked below (the whole page, up to a limit)
    bottom = 0
    for _, top, _, tall in probe["plots"] + probe["formulas"][:2] + probe["findings"]:
        bottom = max(bottom, top + tall)
    height = min(max(2000, probe["height"]), max(2000, bottom + 40))
    taken = run_chromium(browser, tmp_path, page, f"--window-size={WIDTH},{height}", f"--screenshot={shot}")
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    artifacts = os.environ.get("TRACER_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts) / "report.png")
        shutil.copy(page, Path(artifacts) / "report.html")

    with Image.open(shot) as image:
        assert (WIDTH, height) == image.size
        png = np.asarray(image.convert("RGB"))
    whole = region_stats(png, (0, 0, WIDTH, height))
    assert whole["dark"] > 1000  # text is on the page

    assert probe["formulas"], "no formula on the page"
    for box in probe["formulas"][:2]:
        stats = region_stats(png, box)
        assert stats["dark"] > 50, f"formula region {box} is blank: {stats}"

    assert len(probe["plots"]) >= 4, probe["plots"]  # loss, gradients, updates, activations
    for box in probe["plots"]:
        stats = region_stats(png, box)
        assert stats["coloured"] > 100 and stats["dark"] > 100, f"plot region {box} is blank: {stats}"

    assert probe["findings"] or "no findings" in probe["text"]


# --------------------------------------------------------------------------- polish (issue 17)

_MATH_PROBE = """
<script>
(function () {
  function box(el) { var r = el.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; }
  var out = {
    hats: Array.prototype.map.call(document.querySelectorAll("mover"), function (m) {
      return {base: box(m.children[0]), hat: box(m.children[1]), text: m.children[1].textContent};
    }),
    roots: document.querySelectorAll("msqrt").length,
    rules: Array.prototype.map.call(document.querySelectorAll(".rule"), function (el) { return el.tagName; }),
    figures: Array.prototype.map.call(document.querySelectorAll("figure.tracer-plot"), function (el) { return el.id; }),
    plots: Array.prototype.map.call(document.querySelectorAll("figure.tracer-plot svg"), box),
    text: document.body.innerText
  };
  var pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  pre.hidden = true;
  document.body.appendChild(pre);
})();
</script>
"""


def probe_page(browser, tmp_path, html, height=1600):
    """Chromium's DOM probe of ``html`` (see ``_MATH_PROBE``) and a screenshot of it, as pixels."""
    page = tmp_path / "page.html"
    page.write_text(html.replace("</body>", _MATH_PROBE + "</body>", 1), encoding="utf-8")
    dumped = run_chromium(browser, tmp_path, page, f"--window-size={WIDTH},{height}", "--dump-dom")
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    match = re.search(r'<pre id="probe" hidden="">(.*?)</pre>', dumped.stdout, re.DOTALL)
    assert match, dumped.stdout[-2000:]
    probe = json.loads(
        match.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")
    )
    shot = tmp_path / "page.png"
    taken = run_chromium(browser, tmp_path, page, f"--window-size={WIDTH},{height}", f"--screenshot={shot}")
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    artifacts = os.environ.get("TRACER_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts) / f"{tmp_path.name}.png")
    with Image.open(shot) as image:
        return probe, np.asarray(image.convert("RGB"))


def test_a_one_step_trace_page_draws_no_plots_over_steps(browser, tmp_path):
    from _reference import trace_reference

    path = trace_reference(tmp_path / "trace", steps=1)
    probe, png = probe_page(browser, tmp_path, tracer.report(path).to_html())
    assert ["plot-histogram"] == probe["figures"]  # no loss, norm, ratio or activation plot of one dot
    assert "One step traced (step 0): nothing to plot over steps; its numbers are below." in probe["text"]
    [box] = probe["plots"]
    stats = region_stats(png, [round(v) for v in box])
    assert stats["coloured"] > 100 and stats["dark"] > 100, stats  # the histogram is drawn


def test_hats_and_radicals_render_over_their_letters(browser, tmp_path):
    pytest.importorskip("latex2mathml", reason="MathML needs the 'math' extra (latex2mathml)")
    torch.manual_seed(0)
    model = nn.Linear(2, 1).double()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, amsgrad=True)
    with tracer.trace(model, optimizer, path=tmp_path / "trace") as run:
        for _ in range(2):
            optimizer.zero_grad()
            model(torch.randn(4, 2, dtype=torch.float64)).pow(2).mean().backward()
            optimizer.step()
    html = tracer.report(run.path).to_html()
    latex = re.findall(r"<summary>LaTeX</summary><pre>(.*?)</pre>", html, re.DOTALL)
    probe, png = probe_page(browser, tmp_path, html, height=3000)
    assert probe["rules"] and {"DIV"} == set(probe["rules"])  # one math style: every formula is MathML
    assert sum(len(re.findall(r"\\(?:wide)?hat\{", t)) for t in latex) == len(probe["hats"]) > 0  # as the LaTeX has
    assert sum(t.count(r"\sqrt") for t in latex) == probe["roots"] > 0
    for hat in probe["hats"]:
        (bx, by, bw, bh), (hx, hy, hw, hh) = hat["base"], hat["hat"]
        assert "ˆ" == hat["text"]
        assert bx - 1 <= hx + hw / 2 <= bx + bw + 1, hat  # over its letter, not beside it
        assert hy + hh <= by + bh / 2, hat  # above the letter's middle: not through it
        assert bw < 3 * 12, hat  # over one letter (m, v), not over a subscripted group


def test_check_cells_keep_whole_numbers_and_a_zero_parameter_has_no_ratio(browser, tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3), torch.nn.Flatten(), torch.nn.Linear(288, 4), torch.nn.Linear(4, 2)
    )
    with torch.no_grad():
        model[-1].bias.zero_()
    model[-1].bias.requires_grad_(False)  # stays zero: ‖θ‖ = 0 at every step
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    frozen = torch.nn.Parameter(torch.zeros(3))  # a zero parameter that the optimizer moves
    opt.add_param_group({"params": [frozen]})
    path = tmp_path / "trace"
    with tracer.trace(model, opt, path=path):
        for _ in range(2):
            opt.zero_grad()
            (model(torch.randn(2, 1, 8, 8)).sum() + frozen.sum()).backward()
            opt.step()
    probe, _ = probe_page(browser, tmp_path, tracer.report(path).to_html(findings=False))
    text = probe["text"]
    assert "(1152 elements" in text  # the reason that an 80-character cut used to end as "(11"
    assert not re.search(r"\(11(?!52)", text)
    assert "nan" not in text.lower().replace("nanogpt", "")
