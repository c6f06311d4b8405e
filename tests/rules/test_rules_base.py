"""The shared machinery of the rules: conditions, lines, explain templates and the base predict."""

import pytest
import torch

from tracer.rules._base import Line, Pick, Rule, Values, flag, holds
from tracer.rules._shared import MAXIMIZE


def test_a_flag_is_on_when_true_or_nonzero():
    hparams = {"a": True, "b": False, "c": 0, "d": 0.1, "e": None, "f": torch.tensor(0.0), "g": "strong_wolfe"}
    assert [True, False, False, True, False, False, True, False] == [
        flag(hparams, key) for key in ("a", "b", "c", "d", "e", "f", "g", "absent")
    ]


def test_conditions_join_flags_with_and_and_not():
    hparams = {"momentum": 0.9, "nesterov": False}
    assert holds("", hparams)
    assert holds("momentum and not nesterov", hparams)
    assert not holds("momentum and nesterov", hparams)
    assert holds(lambda h: h["momentum"] > 0.5, hparams)


def test_line_flags_include_its_picks():
    line = Line(("b ← ", Pick("dampening", "(1 − τ)·g", "g")), "b", when="momentum and not nesterov")
    assert {"dampening", "momentum", "nesterov"} == line.flags()
    assert set() == Line("x", "x", when=lambda h: True).flags()


def explain_one(template, parts, state=None, hparams=None):
    """The explain lines of a one-line rule whose compute returns ``parts``."""
    rule = Rule(optimizer="X", lines=(Line("x", "x", explain=template),), compute=lambda p, g, s, h: parts)
    return rule.explain("w[0]", 1.0, -20.0, state or {}, hparams or {})


def test_templates_format_operands_and_results():
    template = "{label}: {grad} {grad!n} {exp_avg} {1-dampening} {t} {new!n}"
    lines = explain_one(template, {"param": -0.25, "t": 3}, {"exp_avg": 0.5}, {"dampening": 0})
    assert ["w[0]: (−20) −20 0.5 1 3 −0.25"] == lines


def test_a_template_naming_nothing_known_is_an_error():
    with pytest.raises(KeyError, match="no input, part, state key or hparam"):
        explain_one("{missing}", {"param": 0.0})


def test_values_read_parts_before_state_before_hparams():
    values = Values("w", 1.0, 2.0, {"a": 3.0, "b": 4.0}, {"a": 5.0, "b": 6.0, "c": 7}, {"a": torch.tensor(8.0)})
    assert [8.0, 4.0, 7.0] == [values["a"], values["b"], values["c"]]
    assert values.fresh("absent") and not values.fresh("a")


def test_text_and_latex_show_only_the_lines_that_hold():
    rule = Rule(optimizer="X", lines=(MAXIMIZE, Line("θ ← θ − γ·g", r"\theta", when="not frozen")), compute=None)
    assert "θ ← θ − γ·g" == rule.text({})
    assert r"\theta" == rule.latex({})
    assert "g ← −g\nθ ← θ − γ·g" == rule.text({"maximize": True})
    assert r"\begin{aligned}&g_t \leftarrow -g_t \\ &\theta\end{aligned}" == rule.latex({"maximize": True})


def test_a_line_may_show_in_one_rendering_only():
    rule = Rule(optimizer="X", lines=(Line(None, r"\tilde{\gamma}"), Line("θ", r"\theta")), compute=None)
    assert "θ" == rule.text({})
    assert r"\begin{aligned}&\tilde{\gamma} \\ &\theta\end{aligned}" == rule.latex({})


def test_predict_skips_a_parameter_without_gradient_and_runs_compute_otherwise():
    def compute(param, grad, state, hparams):
        return {"param": param - hparams["lr"] * grad}

    rule = Rule(optimizer="X", lines=(), compute=compute, result="{label}: {param} − {lr} · {grad} = {new!n}")
    param = torch.tensor([1.0, 2.0], dtype=torch.float64)
    grad = torch.tensor([2.0, -2.0], dtype=torch.float64)
    assert torch.equal(param, rule.predict(param, None, {}, {"lr": 0.5}))
    assert torch.equal(torch.tensor([0.0, 3.0], dtype=torch.float64), rule.predict(param, grad, {}, {"lr": 0.5}))
    assert ["w: 2 − 0.5 · (−2) = 3"] == rule.explain("w", 2.0, -2.0, {}, {"lr": 0.5})
