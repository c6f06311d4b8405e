"""A tiny document model (headings, paragraphs, lists, tables, figures) and its renderers.

The report, the findings and the plots build blocks once; text, Markdown, HTML and LaTeX
are renderings of the same blocks, so they never disagree, and all of tracer's HTML comes
from :func:`to_html` (a page) or :func:`to_html_fragment` (a notebook cell) with the one
:data:`STYLESHEET`. Every text in a block is plain text (names from a trace included): each
renderer escapes all of it with its one helper — :func:`escape_text`,
:func:`escape_markdown`, ``html.escape``, :func:`escape_latex` — so a name such as
``"a|b<c>"`` or one holding a newline cannot change the layout.

>>> page = to_html([Heading(1, "Run 1"), Para("2 steps", tone="ok")], title="Run 1")
>>> print(to_text([Heading(1, "Run 1"), Table(("layer", "‖g‖"), (("fc", "0.5"),))]))
Run 1
=====
<BLANKLINE>
  layer | ‖g‖
  ------+----
  fc    | 0.5
<BLANKLINE>
"""

from __future__ import annotations

import dataclasses
import html
import itertools
import re
from collections.abc import Sequence

from tracer._escape import _md_code, _md_fence, _md_line, escape_latex, escape_markdown, escape_text, html_plain_rows
from tracer._mathml import mathml as _mathml

TONES = ("", "ok", "bad", "warn", "muted")
"""How a paragraph or a table cell is coloured in HTML: ✓ green, ✗ red, a warning amber,
a side note grey (``""``: as the text around it). Other renderings show the text only."""


@dataclasses.dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclasses.dataclass(frozen=True)
class Para:
    text: str
    lead: str = ""  # a bold lead-in ("Updates."), written before the text
    tone: str = ""  # one of TONES


@dataclasses.dataclass(frozen=True)
class Items:
    items: tuple[str, ...]
    code: bool = False  # hand arithmetic: monospace


@dataclasses.dataclass(frozen=True)
class Cell:
    """A table cell with more than text: a tone, monospace, a small note under it.

    Example (a finding's row)::

        Table(("severity", "finding", "what"),
              ((Cell("ERROR", tone="bad"), Cell("first-nonfinite", code=True),
                Cell("loss is NaN at step 3", note="evidence: loss=nan")),),
              align="left")
    """

    text: str
    tone: str = ""  # one of TONES
    code: bool = False
    note: str = ""  # a second, smaller line (HTML); in parentheses elsewhere


@dataclasses.dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str | Cell, ...], ...]
    align: str = "right"  # "right": numbers; "left": prose (findings)


@dataclasses.dataclass(frozen=True)
class Formula:
    text: str  # Unicode, one assignment a line
    latex: str


@dataclasses.dataclass(frozen=True)
class Figure:
    """An SVG drawn by tracer (``tracer.plots``) with its caption; HTML only (other
    renderings leave figures out: they are pictures of numbers the text already gives).

    Example::

        Figure(tracer.plots.loss_plot(trace), "Loss per step", key="loss")
    """

    svg: str  # a ready <svg> element made by tracer._plots (never text from a trace unescaped)
    caption: str
    key: str = ""  # the figure's id in the page: plot-<key>


@dataclasses.dataclass(frozen=True)
class Raw:
    """A ready, escaped HTML fragment; other renderings show ``text``."""

    html: str
    text: str = ""


@dataclasses.dataclass(frozen=True)
class Section:
    """A titled group of blocks: a collapsible ``<details>`` in HTML, a heading elsewhere.

    ``cls`` is an extra HTML class of the section (``"tracer-plots"``), for styles and tests.
    """

    title: str
    blocks: tuple
    open: bool = True
    level: int = 2
    cls: str = ""


Block = Heading | Para | Items | Table | Formula | Figure | Raw | Section


def _cell_text(cell: str | Cell) -> str:
    """A cell as one line of plain text: its text, and its note in parentheses."""
    if isinstance(cell, str):
        return cell
    return f"{cell.text} ({cell.note})" if cell.note else cell.text


# --------------------------------------------------------------------------- text


def to_text(blocks: Sequence[Block]) -> str:
    """Plain text: headings underlined, tables aligned, formulas indented; figures left out."""
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Section):
            out += ["", to_text([Heading(b.level, b.title), *b.blocks]).rstrip("\n")]
        elif isinstance(b, Raw):
            if b.text:
                out += ["", escape_text(b.text)]
        elif isinstance(b, Heading):
            title = escape_text(b.text)
            out += ["", title, ("=" if b.level == 1 else "-") * min(len(title), 80)]
        elif isinstance(b, Para):
            out += ["", escape_text(f"{b.lead} {b.text}" if b.lead else b.text)]
        elif isinstance(b, Items):
            out += [""] + [f"  {escape_text(item)}" if b.code else f"- {escape_text(item)}" for item in b.items]
        elif isinstance(b, Table):
            out += [""] + _aligned(b)
        elif isinstance(b, Formula):
            out += [""] + [f"    {escape_text(line)}" for line in b.text.splitlines()]
    return "\n".join(out).strip() + "\n"


def _aligned(t: Table) -> list[str]:
    """The table's lines, each column padded to its widest cell; a column at a time, escaped
    only where it holds what a terminal must not print (a long trace's table has 20k rows)."""
    columns = [[c if type(c) is str else _cell_text(c) for c in (h, *(r[i] for r in t.rows))]
               for i, h in enumerate(t.header)]  # fmt: skip
    columns = [c if "".join(c).isprintable() else [escape_text(x) for x in c] for c in columns]
    widths = [max(map(len, column)) for column in columns]
    line = "  " + " | ".join(f"{{:<{w}}}" for w in widths)
    rows = list(zip(*columns))  # the header, then the rows: formatted in one call, no cell holds a newline
    body = ((line + "\n") * len(t.rows)).format(*itertools.chain.from_iterable(rows[1:])).split("\n")[:-1]
    return [line.format(*(rows[0] if rows else ())), "  " + "-+-".join("-" * w for w in widths), *body]


# --------------------------------------------------------------------------- Markdown


def to_markdown(blocks: Sequence[Block], *, math: bool = True) -> str:
    """Markdown (CommonMark and GitHub's); ``math`` adds each formula as a ``$$`` LaTeX block."""
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Section):
            out += [to_markdown([Heading(b.level, b.title), *b.blocks], math=math)]
        elif isinstance(b, Raw):
            if b.text:
                out += [_md_line(b.text), ""]
        elif isinstance(b, Heading):
            out += ["#" * b.level + " " + escape_markdown(b.text.strip()), ""]
        elif isinstance(b, Para):
            text = f"**{escape_markdown(b.lead)}** {escape_markdown(b.text.strip())}" if b.lead else _md_line(b.text)
            out += [text, ""]
        elif isinstance(b, Items):
            out += [f"- {_md_code(i)}" if b.code else f"- {_md_line(i)}" for i in b.items] + [""]
        elif isinstance(b, Table):
            out.append("| " + " | ".join(map(escape_markdown, b.header)) + " |")
            out.append("|" + "---|" * len(b.header))
            out += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in b.rows]
            out.append("")
        elif isinstance(b, Formula):
            text = "\n".join(escape_text(line) for line in b.text.splitlines())
            fence = _md_fence(text)
            out += [fence + "text", text, fence, ""]
            if math:
                out += ["$$", b.latex, "$$", ""]
    return "\n".join(out).strip() + "\n"


def _md_cell(cell: str | Cell) -> str:
    if isinstance(cell, str) or not cell.code:
        return escape_markdown(_cell_text(cell))
    return _md_code(cell.text) + (f" ({escape_markdown(cell.note)})" if cell.note else "")


# --------------------------------------------------------------------------- HTML

STYLESHEET = """
body.tracer{max-width:60rem;margin:2rem auto;padding:0 1rem}
.tracer{font:15px/1.5 system-ui,-apple-system,Segoe UI,sans-serif;color:#1b1f24}
.tracer h1{font-size:1.6rem}.tracer h2{border-bottom:1px solid #d0d7de;padding-bottom:.2rem;margin-top:2rem}
.tracer h3{font-size:1.05rem;margin-bottom:.3rem}
.tracer pre,.tracer code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.92em}
.tracer pre.rule,.tracer div.rule{background:#f6f8fa;border-left:3px solid #0969da;padding:.5rem .8rem;white-space:pre-wrap}
.tracer div.rule math{display:block;text-align:left;margin:.15rem 0;font-size:1.1em;
font-family:"STIX Two Math","Latin Modern Math","Cambria Math",math}
.tracer ul.arith{list-style:none;padding-left:.8rem}.tracer table{border-collapse:collapse;margin:.5rem 0}
.tracer td,.tracer th{border:1px solid #d0d7de;padding:.2rem .6rem;text-align:right}.tracer th{background:#f6f8fa}
.tracer table.left td,.tracer table.left th{text-align:left;vertical-align:top}
.tracer details{margin:.2rem 0 .6rem}.tracer details>pre{white-space:pre-wrap;overflow-wrap:anywhere}.tracer summary{cursor:pointer;color:#57606a;font-size:.85em}
.tracer details.section>summary{color:inherit;font-size:1em}.tracer details.section>summary>h2{display:inline}
.tracer .ok{color:#1a7f37}.tracer .bad{color:#cf222e;font-weight:600}.tracer .warn{color:#9a6700}
.tracer .muted{color:#57606a}.tracer td.ok,.tracer td.bad,.tracer td.warn,.tracer td.muted{font-weight:600;white-space:nowrap}
.tracer .note{color:#57606a;font-size:.85em;font-family:ui-monospace,SFMono-Regular,Menlo,monospace}
.tracer figure{margin:1rem 0}.tracer figcaption{color:#57606a;font-size:.9em}
.tracer figure svg{max-width:100%;height:auto}.tracer figure svg *{stroke-linejoin:round;stroke-linecap:butt}
"""
"""The one stylesheet of every HTML page and fragment tracer writes (scoped to ``.tracer``)."""


_HTML_SPECIAL = re.compile("[&<>\"'✓✗]")


def _esc(text: str) -> str:
    """``html.escape`` with ✓ and ✗ coloured; most cells (numbers, names) need nothing."""
    return text if _HTML_SPECIAL.search(text) is None else _marks(html.escape(text, quote=True))


def _marks(text: str) -> str:
    return text.replace("✓", '<span class="ok">✓</span>').replace("✗", '<span class="bad">✗</span>')


def _class(*names: str) -> str:
    """`` class="a b"`` of the non-empty names, or nothing."""
    shown = " ".join(n for n in names if n)
    return f' class="{html.escape(shown)}"' if shown else ""


def _html_section(b: Section, mathml: bool = True) -> str:
    tag = f"h{b.level}"
    return (
        f"<details{_class('section', b.cls)}{' open' if b.open else ''}><summary><{tag}>{_esc(b.title)}</{tag}></summary>"
        + _body(b.blocks, mathml)
        + "</details>"
    )


def _html_para(b: Para) -> str:
    lead = f"<strong>{_esc(b.lead)}</strong> " if b.lead else ""
    return f"<p{_class(b.tone)}>{lead}{_esc(b.text)}</p>"


def _html_items(b: Items) -> str:
    items = "".join(f"<li>{'<code>' + _esc(i) + '</code>' if b.code else _esc(i)}</li>" for i in b.items)
    return f"<ul{_class('arith' if b.code else '')}>{items}</ul>"


def _html_cell(cell: str | Cell) -> str:
    if isinstance(cell, str):
        return f"<td>{_esc(cell)}</td>"
    text = f"<code>{_esc(cell.text)}</code>" if cell.code else _esc(cell.text)
    note = f'<div class="note">{_esc(cell.note)}</div>' if cell.note else ""
    return f"<td{_class(cell.tone)}>{text}{note}</td>"


def _html_table(b: Table) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in b.header)
    plain = html_plain_rows(b.rows)  # a long trace's step tables: nothing to escape, ✓/✗ coloured at once
    rows = (
        _marks(plain) if plain is not None else "".join("<tr>" + "".join(map(_html_cell, r)) + "</tr>" for r in b.rows)
    )
    return f"<table{_class('left' if b.align == 'left' else '')}><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _html_formula(b: Formula, mathml: bool = True) -> str:
    shown = _mathml(b.latex) if mathml else None
    html_math = (
        f'<pre class="rule">{_esc(b.text)}</pre>'
        if shown is None
        else f'<div class="rule" role="math" aria-label="{_esc(b.text)}">{shown}</div>'
    )
    return html_math + f"\n<details><summary>LaTeX</summary><pre>{_esc(b.latex)}</pre></details>"


def _html_figure(b: Figure) -> str:
    key = f' id="plot-{html.escape(b.key)}"' if b.key else ""
    return f'<figure class="tracer-plot"{key}>{b.svg}<figcaption>{_esc(b.caption)}</figcaption></figure>'


_HTML = {
    Section: _html_section,
    Raw: lambda b: b.html,
    Heading: lambda b: f"<h{b.level}>{_esc(b.text)}</h{b.level}>",
    Para: _html_para,
    Items: _html_items,
    Table: _html_table,
    Formula: _html_formula,
    Figure: _html_figure,
}


def to_html_body(blocks: Sequence[Block]) -> str:
    """The blocks as HTML elements, without a page or a stylesheet around them. One math style
    per page: every formula is MathML, or (no ``latex2mathml``, or one fails) Unicode text."""
    return _body(blocks, all(_mathml(f.latex) is not None for f in _formulas(blocks)))


def _body(blocks: Sequence[Block], mathml: bool) -> str:
    def one(b: Block) -> str:
        if isinstance(b, (Formula, Section)):
            return _html_formula(b, mathml) if isinstance(b, Formula) else _html_section(b, mathml)
        return _HTML[type(b)](b)

    return "\n".join(map(one, blocks))


def _formulas(blocks: Sequence[Block]) -> list[Formula]:
    return [
        f
        for b in blocks
        for f in ([b] if isinstance(b, Formula) else _formulas(b.blocks) if isinstance(b, Section) else [])
    ]


def to_html(blocks: Sequence[Block], title: str) -> str:
    """One self-contained page: no scripts, no network, every text escaped.

    Example::

        Path("page.html").write_text(to_html([Heading(1, "Run 1"), Para("ok")], title="Run 1"))
    """
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<title>{html.escape(title)}</title><style>{STYLESHEET}</style></head>\n<body class="tracer">\n'
        + to_html_body(blocks)
        + "\n</body></html>\n"
    )


def to_html_fragment(blocks: Sequence[Block]) -> str:
    """The blocks as one ``<div class="tracer">`` with the stylesheet: what a notebook shows
    (``_repr_html_``), styled as the page is, without restyling the notebook around it."""
    return f'<div class="tracer"><style>{STYLESHEET}</style>\n{to_html_body(blocks)}\n</div>'


# --------------------------------------------------------------------------- LaTeX

_tex = escape_latex


def _tex_cell(cell: str | Cell) -> str:
    if isinstance(cell, Cell) and cell.code:
        return f"\\texttt{{{_tex(cell.text)}}}" + (f" ({_tex(cell.note)})" if cell.note else "")
    return _tex(_cell_text(cell))


def to_latex(blocks: Sequence[Block]) -> str:
    """A LaTeX fragment (needs amsmath; Unicode text needs a Unicode engine or inputenc)."""
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Section):
            out.append(to_latex([Heading(b.level, b.title), *b.blocks]).rstrip("\n"))
        elif isinstance(b, Raw):
            if b.text:
                out.append(_tex(b.text) + "\n")
        elif isinstance(b, Heading):
            cmd = {1: "section*", 2: "subsection*"}.get(b.level, "subsubsection*")
            out.append(f"\\{cmd}{{{_tex(b.text)}}}")
        elif isinstance(b, Para):
            lead = f"\\textbf{{{_tex(b.lead)}}} " if b.lead else ""
            out.append(lead + _tex(b.text) + "\n")
        elif isinstance(b, Items):
            wrap = (lambda s: f"\\texttt{{{_tex(s)}}}") if b.code else _tex
            out.append("\\begin{itemize}\n" + "".join(f"  \\item {wrap(i)}\n" for i in b.items) + "\\end{itemize}")
        elif isinstance(b, Table):
            cols = ("l" if b.align == "left" else "r") * len(b.header)
            rows = [" & ".join(map(_tex, b.header)), *(" & ".join(map(_tex_cell, r)) for r in b.rows)]
            out.append(f"\\begin{{tabular}}{{{cols}}}\n" + " \\\\\n".join(rows) + " \\\\\n\\end{tabular}")
        elif isinstance(b, Formula):
            out.append(f"\\[\n{b.latex}\n\\]")
    return "\n".join(out) + "\n"
