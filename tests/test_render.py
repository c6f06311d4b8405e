"""tracer._render: one document model, four renderings, one HTML writer with one stylesheet."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import tracer
from tracer import _render
from tracer._render import (
    STYLESHEET,
    TONES,
    Cell,
    Figure,
    Formula,
    Heading,
    Items,
    Para,
    Raw,
    Section,
    Table,
    to_html,
    to_html_body,
    to_html_fragment,
    to_latex,
    to_markdown,
    to_text,
)

HOSTILE = "<script>x</script>&|`*_$#"
PACKAGE = Path(tracer.__file__).parent


def finding_table(text: str = "loss is NaN") -> Table:
    return Table(
        ("severity", "finding", "what"),
        ((Cell("ERROR", tone="bad"), Cell("first-nonfinite", code=True), Cell(text, note="evidence: loss=nan")),),
        align="left",
    )


def test_every_block_renders_in_every_format():
    blocks = [
        Heading(1, "Run"),
        Para("2 steps", lead="Summary.", tone="ok"),
        Items(("w: 1 − 0.1 · 2 = 0.8",), code=True),
        finding_table(),
        Formula("θ ← θ − γ·g", r"\theta \leftarrow \theta - \gamma g"),
        Figure("<svg></svg>", "Loss per step", key="loss"),
        Raw("<p>raw</p>", text="raw"),
        Section("Step 0", (Para("inside"),), cls="tracer-step"),
    ]
    for render in (to_text, to_markdown, to_latex, to_html_body):
        out = render(blocks)
        assert "Run" in out and "first-nonfinite" in out and "inside" in out, render.__name__
    assert "Loss per step" not in to_text(blocks) + to_markdown(blocks) + to_latex(blocks)  # figures: HTML only
    assert "loss is NaN (evidence: loss=nan)" in to_text(blocks)
    assert "`first-nonfinite` | loss is NaN (evidence: loss=nan)" in to_markdown(blocks)
    assert r"\begin{tabular}{lll}" in to_latex(blocks) and r"\texttt{first-nonfinite}" in to_latex(blocks)


def test_new_html_blocks():
    body = to_html_body([finding_table(), Figure("<svg>1</svg>", "Loss per step", key="loss")])
    assert '<table class="left">' in body
    assert '<td class="bad">ERROR</td><td><code>first-nonfinite</code></td>' in body
    assert '<td>loss is NaN<div class="note">evidence: loss=nan</div></td>' in body
    assert (
        '<figure class="tracer-plot" id="plot-loss"><svg>1</svg><figcaption>Loss per step</figcaption></figure>' in body
    )
    assert '<p class="warn">careful</p>' == to_html_body([Para("careful", tone="warn")])
    assert to_html_body([Section("Plots", (), cls="tracer-plots")]).startswith(
        '<details class="section tracer-plots" open><summary><h2>Plots</h2></summary>'
    )
    assert to_html_body([Section("Step 3", (), open=False)]).startswith('<details class="section"><summary>')


def test_every_text_of_the_new_blocks_is_escaped():
    blocks = [
        Table((HOSTILE,), ((Cell(HOSTILE, code=True, note=HOSTILE),), (Cell(HOSTILE, tone="muted"),))),
        Figure("<svg></svg>", HOSTILE, key='a"b'),
        Para(HOSTILE, tone="warn"),
        Section(HOSTILE, (), cls='x" onclick="y'),
    ]
    page = to_html(blocks, title=HOSTILE)
    assert "<script>" not in page and 'onclick="y' not in page and 'id="plot-a"b"' not in page
    # the title, the header, two cells and a note, the caption, the paragraph, the section's title
    assert 8 == page.count(html.escape(HOSTILE))
    assert 6 == to_text(blocks).count(HOSTILE)  # plain text shows it as it is (no caption: no figure)


def test_one_stylesheet_styles_every_tone_and_block():
    page = to_html([Para("x")], title="t")
    assert 1 == page.count("<style>") and STYLESHEET in page and '<body class="tracer">' in page
    for tone in filter(None, TONES):
        assert f".tracer .{tone}{{" in STYLESHEET, tone
    for selector in ("table.left", ".note", "figure", "figcaption", "details.section", "pre.rule"):
        assert selector in STYLESHEET, selector
    rules = re.findall(r"(?:^|})([^{}]+)\{", STYLESHEET)
    assert all(s.strip().startswith(("body.tracer", ".tracer")) for r in rules for s in r.split(","))  # scoped


def test_a_notebook_fragment_carries_the_stylesheet_scoped_to_itself():
    fragment = to_html_fragment([Heading(2, "Findings"), finding_table()])
    assert fragment.startswith(f'<div class="tracer"><style>{STYLESHEET}</style>') and fragment.endswith("</div>")
    assert "<body" not in fragment and "<html" not in fragment


def test_no_module_but_render_writes_a_stylesheet_or_html_classes():
    """One HTML writer: every other module builds blocks (argparse's formatter_class aside)."""
    offenders = []
    for source in sorted(PACKAGE.rglob("*.py")):
        if source.name == "_render.py":
            continue
        text = source.read_text(encoding="utf-8")
        text = text.replace("formatter_class=", "").replace('re.compile(r"<style', "")
        if "<style" in text or "class=" in text:
            offenders.append(str(source.relative_to(PACKAGE)))
    assert [] == offenders


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 1)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tracer.trace(model, opt, path=tmp_path_factory.mktemp("render") / "t") as run:
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(4, 2, dtype=torch.float64)).pow(2).mean().backward()
            opt.step()
    return run


def test_the_report_page_is_one_document_with_one_stylesheet(small_run):
    pytest.importorskip("matplotlib")
    page = tracer.report(small_run).to_html()
    assert 1 == page.count("<style")  # the report's, the findings' and the plots' styles are one
    assert 'class="section tracer-plots"' in page and "tracer-findings" in page
    assert page.index("tracer-findings") < page.index("tracer-plots") < page.index("Step 0")


def test_the_block_api_other_modules_build_on_keeps_its_signatures():
    # tracer._diagnose and tracer._report build these; positional order is part of the API
    assert Heading(2, "t") == Heading(level=2, text="t")
    assert Para("t", "Lead.") == Para(text="t", lead="Lead.")
    assert Items(("a",), True) == Items(items=("a",), code=True)
    assert Table(("h",), (("c",),)) == Table(header=("h",), rows=(("c",),))
    assert Formula("t", "l") == Formula(text="t", latex="l")
    assert Raw("<p>", "t") == Raw(html="<p>", text="t")
    assert Section("t", (), False, 3) == Section(title="t", blocks=(), open=False, level=3)
    for name in ("to_html", "to_markdown", "to_text", "to_latex", "escape_text", "escape_markdown", "escape_latex"):
        assert callable(getattr(_render, name)), name


# --------------------------------------------------------------------------- math (issue 17)


def test_one_math_style_per_page(monkeypatch):
    from tracer import _render

    good = Formula("θ ← θ − γ·g", r"\theta \leftarrow \theta - \gamma g")
    bad = Formula("x ← y", r"\unknown{")
    monkeypatch.setattr(_render, "_mathml", lambda latex: None if "unknown" in latex else f"<math>{latex}</math>")
    both = _render.to_html_body([good, _render.Section("S", (bad,))])
    assert "<math>" not in both and 2 == both.count('<pre class="rule">')  # one fails: every one is text
    alone = _render.to_html_body([good, _render.Section("S", (good,))])
    assert 2 == alone.count('<div class="rule" role="math"') and '<pre class="rule">' not in alone


def test_hats_go_over_their_letter():
    pytest.importorskip("latex2mathml", reason="MathML needs the 'math' extra (latex2mathml)")
    from tracer._render import _mathml

    shown = _mathml(r"\widehat{m_t} \leftarrow m_t / (1 - \beta_1^t)")
    assert "<msub><mover><mi>m</mi><mo>&#x002C6;</mo></mover><mi>t</mi></msub>" in shown  # as \hat{m}_t
    assert "&#x0005E;" not in shown
    assert "<mover><mi>x</mi><mo>&#x002C6;</mo></mover>" in _mathml(r"\hat{x} = 1")


def test_a_text_table_pads_each_column_to_its_widest_cell_and_escapes_only_what_a_terminal_must_not_print():
    table = Table(
        ("step", "parameter", "check"), (("0", "fc.weight", Cell("✓ rule", note="why")), ("10", "b\x1b[2J", "–"))
    )
    assert [
        "  step | parameter | check       ",
        "  -----+-----------+-------------",
        "  0    | fc.weight | ✓ rule (why)",
        "  10   | b\\x1b[2J  | –           ",
    ] == _render._aligned(table)
    assert ["  a | b", "  --+--"] == _render._aligned(Table(("a", "b"), ()))
    assert ["  "] * 4 == _render._aligned(Table((), ((), ())))  # no columns: header, rule, two rows
