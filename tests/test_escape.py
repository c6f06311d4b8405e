"""Names from a trace cannot change the layout of what tracer prints: Markdown, text, HTML.

The model's module is named with every character that means something in Markdown or in a
terminal: a table pipe, an HTML tag, backticks, emphasis, a newline that starts a heading.
"""

from __future__ import annotations

import re

import pytest
import torch
from test_cli import run_quietly
from torch import nn

import tracer
from tracer._render import escape_markdown, escape_text

HOSTILE = "a|b<c>`*x*`_y_\n# h"
SHOWN = "a|b<c>`*x*`_y_\\n# h"  # what a reader sees: the newline as \n


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Two SGD steps of a Linear layer named HOSTILE; the second step's input holds a NaN."""
    torch.manual_seed(0)
    model = nn.ModuleDict({HOSTILE: nn.Linear(2, 1)}).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tracer.trace(model, opt, path=tmp_path_factory.mktemp("escape") / "t") as run:
        for x in (torch.ones(1, 2, dtype=torch.float64), torch.tensor([[1.0, float("nan")]], dtype=torch.float64)):
            opt.zero_grad()
            model[HOSTILE](x).sum().backward()
            opt.step()
    return run.path


def _table_rows(markdown: str) -> list[list[str]]:
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    return [re.split(r"(?<!\\)\|", row)[1:-1] for row in rows]


def test_markdown_report_keeps_its_headings_tables_and_code(hostile):
    md = tracer.report(hostile, step=0).to_markdown()
    headings = [line for line in md.splitlines() if line.startswith("#")]
    assert 4 == len(headings)  # the title, step 0, and one per parameter: the name starts none
    assert [4] * 5 == [len(cells) for cells in _table_rows(md)]  # header, rule, 3 elements
    prose = "\n".join(line for line in md.splitlines() if not line.startswith("- `"))  # code spans left out
    assert "<c>" in md and not re.search(r"(?<!\\)<", prose)  # outside code spans, < is escaped
    assert f"- ``{SHOWN}.weight[0,0]: " in md  # a code span fenced by more backticks than the name holds


def test_markdown_report_renders_the_name_exactly(hostile):
    markdown_it = pytest.importorskip("markdown_it")
    md = tracer.report(hostile, step=0).to_markdown()
    tokens = markdown_it.MarkdownIt("commonmark").enable("table").parse(md)
    assert 4 == sum(t.type == "heading_open" for t in tokens)
    inline = [child for t in tokens if t.children for child in t.children]
    assert not [c for c in inline if c.type in ("html_inline", "em_open", "strong_open") and c.markup != "**"]
    texts = "".join(c.content for c in inline if c.type in ("text", "code_inline"))
    assert f"{SHOWN}.weight (SGD)" in texts and f"{SHOWN}.weight[0,1]" in texts
    cells = [t for t in tokens if t.type == "td_open"]
    assert 3 * 4 == len(cells)  # weight[0,0], weight[0,1], bias[0]


def test_text_report_prints_the_name_on_one_line(hostile):
    text = str(tracer.report(hostile, step=0))
    assert HOSTILE not in text
    lines = text.splitlines()
    rows = [line for line in lines if line.startswith("  0    | ")]  # one line per update
    assert 2 == len(rows) and all(f"| {SHOWN}." in row for row in rows)
    table = [line for line in lines if line.startswith("  ") and " | " in line]
    assert 1 == len({line.count(" | ") - SHOWN.count(" | ") * (SHOWN in line) for line in table})
    assert f"SGD: {SHOWN}.weight, {SHOWN}.bias" in lines  # the rule's parameters, on one line


def test_latex_and_html_escape_the_name(hostile):
    latex = tracer.report(hostile, step=0).to_latex()
    assert r"a|b<c>`*x*`\_y\_\textbackslash{}n\# h.weight" in latex
    page = tracer.report(hostile, step=0).to_html(findings=False)
    assert "a|b&lt;c&gt;`*x*`_y_\n# h.weight" in page and "<c>" not in page


def test_summary_prints_each_name_on_one_line(hostile):
    code, out, err = run_quietly(["summary", str(hostile)])
    assert (0, "") == (code, err)
    assert HOSTILE not in out
    assert f"  activation       {SHOWN}" in out
    norms = out.split("norms per parameter")[1].splitlines()
    assert norms[2].startswith(f"  {SHOWN}.weight  ")


def test_diagnose_and_diff_quote_the_name(hostile, tmp_path):
    findings = tracer.diagnose(hostile)
    first = next(f for f in findings if f.code == "first-nonfinite")
    assert HOSTILE == first.name  # the data keeps the name as it is ...
    text = str(findings)
    assert HOSTILE not in text and repr(HOSTILE) in text  # ... what is printed quotes it on one line
    frame = tracer.load(hostile)
    changed = frame.assign(values=[v * 2 if k == "update" else v for k, v in zip(frame.kind, frame["values"])])
    message = str(tracer.diff(hostile, changed))
    assert f"update {HOSTILE + '.weight'!r} call 0" in message.splitlines()[0]


@pytest.mark.parametrize(
    "text, markdown",
    [
        ("fc1.weight", "fc1.weight"),
        ("a|b", r"a\|b"),
        ("<script>", r"\<script>"),
        ("`x`", r"\`x\`"),
        ("*x* _y_ snake_case", r"\*x\* \_y\_ snake_case"),
        ("[x](http://e)", r"[x\](http://e)"),
        ("a\nb\tc\x1b[31m", r"a\\nb\\tc\\x1b[31m"),
        ("$x$ ~y~ &amp; #1", r"\$x\$ \~y\~ \&amp; \#1"),
    ],
)
def test_escape_markdown(text, markdown):
    assert markdown == escape_markdown(text)


def test_escape_text():
    assert "fc1.weight" == escape_text("fc1.weight")
    assert "a\\nb\\r\\x1b\\udcff\\u202e é" == escape_text("a\nb\r\x1b\udcff\u202e é")
