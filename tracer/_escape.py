"""Escaping for every text tracer prints: plain text, Markdown, LaTeX (HTML: ``html.escape``).

A name from a trace (``"a|b<c>"``, one holding a newline or a terminal escape) is shown
exactly as it is and cannot change the layout around it.

>>> escape_text("fc\\n1")
'fc\\\\n1'
>>> escape_markdown("a|b")
'a\\\\|b'
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any


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


_LATEX_SPECIAL = {c: "\\" + c for c in "&%$#_{}"} | {"~": r"\textasciitilde{}", "^": r"\^{}", "\\": r"\textbackslash{}"}


def escape_latex(text: str) -> str:
    """``text`` as LaTeX text that prints exactly ``text``."""
    return "".join(_LATEX_SPECIAL.get(c, c) for c in escape_text(text))


_ESCAPED = re.compile("[&<>\"']")


def html_plain_rows(rows: Sequence[Sequence[Any]]) -> str | None:
    """The ``<tr>`` rows of a table whose cells are all text that HTML needs no escape for
    (numbers, names, ✓/✗: no ``&<>"'``), written in one pass; None otherwise.

    >>> html_plain_rows([("fc", "0.5")])
    '<tr><td>fc</td><td>0.5</td></tr>'
    """
    try:
        plain = _ESCAPED.search("\n".join(map("\n".join, rows))) is None
    except TypeError:  # a cell that is not text
        return None
    if not plain:
        return None
    return "".join(["<tr><td>" + "</td><td>".join(r) + "</td></tr>" if r else "<tr></tr>" for r in rows])
