"""A tiny document model (headings, paragraphs, lists, tables, rules) and its renderers.

The report builds blocks once; text, Markdown, HTML and LaTeX are renderings of the same
blocks, so they never disagree. Every text in a block is plain text (names from a trace
included): each renderer escapes all of it with its one helper — :func:`escape_text`,
:func:`escape_markdown`, ``html.escape``, :func:`escape_latex` — so a name such as
``"a|b<c>"`` or one holding a newline cannot change the layout.
"""

from __future__ import annotations

import dataclasses
import html
import re
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclasses.dataclass(frozen=True)
class Para:
    text: str
    lead: str = ""  # a bold lead-in ("Updates."), written before the text


@dataclasses.dataclass(frozen=True)
class Items:
    items: tuple[str, ...]
    code: bool = False  # hand arithmetic: monospace


@dataclasses.dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclasses.dataclass(frozen=True)
class Formula:
    text: str  # Unicode, one assignment a line
    latex: str


@dataclasses.dataclass(frozen=True)
class Raw:
    """A ready, escaped HTML fragment (plots, findings); other renderings show ``text``."""

    html: str
    text: str = ""


@dataclasses.dataclass(frozen=True)
class Section:
    """A titled group of blocks: a collapsible ``<details>`` in HTML, a heading elsewhere."""

    title: str
    blocks: tuple
    open: bool = True
    level: int = 2


Block = Heading | Para | Items | Table | Formula | Raw | Section


def escape_text(text: str) -> str:
    """``text`` safe to print in a line of plain text: characters that are not printable
    (newlines, tabs, terminal escapes, lone surrogates of undecodable file names) become
    Python escapes (``\\n``, ``\\x1b``, ``\\udcff``)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# backslash-escaped wherever they stand: they open code, emphasis, HTML, tables, math, ...
_MD_INLINE = re.compile(r"[\\`*<|~$&#]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])|\](?=\()")
# escaped at the start of a line: they open headings, quotes, lists, link definitions
_MD_LINE_START = re.compile(r"^(\s*)([>+=\[-]|\d+[.)])")


def escape_markdown(text: str) -> str:
    """``text`` as Markdown (CommonMark and GitHub's) that shows exactly ``text``, on one line:
    inside a line or a table cell; :func:`_md_line` for text that starts a line."""
    return _MD_INLINE.sub(lambda m: "\\" + m.group(0), escape_text(text))


def _md_line(text: str) -> str:
    """:func:`escape_markdown`, for text that starts a line (where ``1.``, ``-`` or ``>`` open blocks)."""
    out = escape_markdown(text.strip())
    return _MD_LINE_START.sub(lambda m: m.group(1) + m.group(2)[:-1] + "\\" + m.group(2)[-1], out)


def _md_code(text: str) -> str:
    """``text`` as a Markdown code span: fenced by more backticks than it holds in a row."""
    text = escape_text(text)
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text[:1] == "`" or text[-1:] == "`" or (text[:1] == " " and text[-1:] == " ") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _md_fence(text: str) -> str:
    """A code fence longer than any run of backticks in ``text``."""
    return "`" * max(3, max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)


def to_text(blocks: Sequence[Block]) -> str:
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
    rows = [tuple(map(escape_text, r)) for r in (t.header, *t.rows)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(t.header))]

    def line(row: tuple[str, ...]) -> str:
        return "  " + " | ".join(c.ljust(w) for c, w in zip(row, widths))

    return [line(rows[0]), "  " + "-+-".join("-" * w for w in widths), *map(line, rows[1:])]


def to_markdown(blocks: Sequence[Block], *, math: bool = True) -> str:
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
            out += ["| " + " | ".join(map(escape_markdown, r)) + " |" for r in b.rows]
            out.append("")
        elif isinstance(b, Formula):
            text = "\n".join(escape_text(line) for line in b.text.splitlines())
            fence = _md_fence(text)
            out += [fence + "text", text, fence, ""]
            if math:
                out += ["$$", b.latex, "$$", ""]
    return "\n".join(out).strip() + "\n"


_CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1b1f24}
h1{font-size:1.6rem}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2rem;margin-top:2rem}h3{font-size:1.05rem;margin-bottom:.3rem}
pre,code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.92em}
pre.rule,div.rule{background:#f6f8fa;border-left:3px solid #0969da;padding:.5rem .8rem;white-space:pre-wrap}
div.rule math{display:block;text-align:left;margin:.15rem 0;font-size:1.1em}
ul.arith{list-style:none;padding-left:.8rem}table{border-collapse:collapse;margin:.5rem 0}
td,th{border:1px solid #d0d7de;padding:.2rem .6rem;text-align:right}th{background:#f6f8fa}
details{margin:.2rem 0 .6rem}summary{cursor:pointer;color:#57606a;font-size:.85em}
details.section>summary{color:inherit;font-size:1em}details.section>summary>h2{display:inline}
.ok{color:#1a7f37}.bad{color:#cf222e;font-weight:600}.none{color:#9a6700}
"""


def _esc(text: str) -> str:
    out = html.escape(text, quote=True)
    return out.replace("✓", '<span class="ok">✓</span>').replace("✗", '<span class="bad">✗</span>')


def to_html_body(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Section):
            tag = f"h{b.level}"
            out.append(
                f"<details class=\"section\"{' open' if b.open else ''}><summary><{tag}>{_esc(b.title)}</{tag}></summary>"
                + to_html_body(b.blocks)
                + "</details>"
            )
        elif isinstance(b, Raw):
            out.append(b.html)
        elif isinstance(b, Heading):
            out.append(f"<h{b.level}>{_esc(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            lead = f"<strong>{_esc(b.lead)}</strong> " if b.lead else ""
            out.append(f"<p>{lead}{_esc(b.text)}</p>")
        elif isinstance(b, Items):
            cls = ' class="arith"' if b.code else ""
            items = "".join(f"<li>{'<code>' + _esc(i) + '</code>' if b.code else _esc(i)}</li>" for i in b.items)
            out.append(f"<ul{cls}>{items}</ul>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{_esc(h)}</th>" for h in b.header)
            rows = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in b.rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(b, Formula):
            mathml = _mathml(b.latex)
            if mathml is None:
                out.append(f'<pre class="rule">{_esc(b.text)}</pre>')
            else:
                out.append(f'<div class="rule" role="math" aria-label="{_esc(b.text)}">{mathml}</div>')
            out.append(f"<details><summary>LaTeX</summary><pre>{_esc(b.latex)}</pre></details>")
    return "\n".join(out)


def _mathml(latex: str) -> str | None:
    """The formula as MathML, one ``<math>`` per line (browsers render it natively), or None
    without the optional ``latex2mathml`` package (``pip install 'torch-tracer[math]'``)."""
    if not latex:
        return None
    try:
        from latex2mathml.converter import convert
    except ImportError:
        return None
    body = re.sub(r"^\\begin\{aligned\}|\\end\{aligned\}$", "", latex.strip())
    lines = [line.replace("&", "").strip() for line in body.split(r"\\")]
    try:
        return "".join(convert(line, display="block") for line in lines if line)
    except Exception:  # noqa: BLE001 - a formula the converter cannot read: show the text
        return None


def to_html(blocks: Sequence[Block], title: str) -> str:
    """One self-contained page: no scripts, no network, every text escaped."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + to_html_body(blocks)
        + "\n</body></html>\n"
    )


_LATEX_SPECIAL = {c: "\\" + c for c in "&%$#_{}"} | {"~": r"\textasciitilde{}", "^": r"\^{}", "\\": r"\textbackslash{}"}


def escape_latex(text: str) -> str:
    """``text`` as LaTeX text that prints exactly ``text``."""
    return "".join(_LATEX_SPECIAL.get(c, c) for c in escape_text(text))


_tex = escape_latex


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
            cols = "r" * len(b.header)
            body = " \\\\\n".join(" & ".join(_tex(c) for c in r) for r in (b.header, *b.rows))
            out.append(f"\\begin{{tabular}}{{{cols}}}\n{body} \\\\\n\\end{{tabular}}")
        elif isinstance(b, Formula):
            out.append(f"\\[\n{b.latex}\n\\]")
    return "\n".join(out) + "\n"
