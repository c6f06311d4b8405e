"""LaTeX formulas as MathML for tracer's HTML pages: browsers render MathML natively.

Needs the optional ``latex2mathml`` package (``pip install 'torch-tracer[math]'``); without
it :func:`mathml` returns None and the page shows each formula's Unicode text instead.

>>> mathml(r"\\hat{x} = 1")                        # doctest: +SKIP
'<math ...><mrow><mover><mi>x</mi><mo>&#x002C6;</mo></mover>...'
"""

from __future__ import annotations

import functools
import re


@functools.lru_cache(maxsize=256)
def mathml(latex: str) -> str | None:
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
        return "".join(_accents(convert(line, display="block")) for line in lines if line)
    except Exception:
        return None


# latex2mathml puts a hat over a whole subscripted symbol (\hat{m_t}: over "m_t"), as the ASCII
# caret "^", which a browser draws small and off to one side: the hat goes over the letter
# alone, as the circumflex accent ˆ (U+02C6), with the subscript (and superscript) after it,
# as in \hat{m}_t
_CARET, _HAT = "<mo>&#x0005E;</mo>", "<mo>&#x002C6;</mo>"
_HAT_OVER_SCRIPT = re.compile(
    r"<mover><mrow><(msub|msubsup)>(<mi>[^<]*</mi>)((?:(?!<mover|<msub).)*?)</\1></mrow>"
    + re.escape(_CARET)
    + "</mover>"
)


_ACCENT_HAT = re.compile(r'<mover accent="true"><mrow>(<mi>[^<]*</mi>)</mrow>' + re.escape(_HAT) + "</mover>")


def _accents(mathml: str) -> str:
    """Hats drawn cleanly over their letter (see ``_HAT_OVER_SCRIPT``)."""
    mathml = _HAT_OVER_SCRIPT.sub(
        lambda m: f"<{m.group(1)}><mover>{m.group(2)}{_HAT}</mover>{m.group(3)}</{m.group(1)}>", mathml
    )
    mathml = mathml.replace(_CARET + "</mover>", _HAT + "</mover>")
    # \hat{x}: an accent, which a browser without a math font draws into the letter's top
    return _ACCENT_HAT.sub(lambda m: f"<mover>{m.group(1)}{_HAT}</mover>", mathml)
