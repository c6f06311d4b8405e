"""The rule table: every torch.optim optimizer is covered, lookups, and every rule renders."""

import dataclasses
import doctest
import inspect
import json
import pathlib
import re
import subprocess
import sys

import pytest
import torch

import tracer.rules
from tracer.rules import RULES, UNSUPPORTED, CannotPredict, Rule, rule_for


def torch_optimizers() -> dict[str, type]:
    """Every Optimizer subclass in the torch.optim namespace."""
    return {
        name: obj
        for name, obj in vars(torch.optim).items()
        if inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer) and obj is not torch.optim.Optimizer
    }


def default_hparams(cls: type) -> dict:
    """The class's default param group as the report module reads it (JSON round trip)."""
    group = cls([torch.nn.Parameter(torch.zeros(2, 2))]).param_groups[0]
    plain = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in group.items() if k != "params"}
    return json.loads(json.dumps(plain))


def test_every_torch_optimizer_has_a_rule_or_a_reason():
    missing = sorted(set(torch_optimizers()) - set(RULES) - set(UNSUPPORTED))
    assert [] == missing


def test_table_names_only_torch_optimizers():
    stale = sorted((set(RULES) | set(UNSUPPORTED)) - set(torch_optimizers()))
    assert [] == stale
    assert set() == set(RULES) & set(UNSUPPORTED)


def test_the_known_optimizers_are_all_covered():
    expected = {
        "SGD", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Adagrad",
        "Adadelta", "ASGD", "Rprop", "SparseAdam", "Adafactor", "Muon", "LBFGS",
    }  # fmt: skip
    assert expected <= set(RULES)


@pytest.mark.parametrize("name", sorted(RULES))
def test_rule_is_named_after_its_key(name):
    assert name == RULES[name].optimizer


def test_rule_for_exact_name():
    assert (RULES["AdamW"], "AdamW") == rule_for("AdamW")


def test_rule_for_subclass_uses_the_first_known_base():
    assert (RULES["SGD"], "SGD") == rule_for("MySGD", ["SGD", "Optimizer"])
    assert (RULES["AdamW"], "AdamW") == rule_for("MyAdamW", ("AdamW", "Adam", "Optimizer"))


def test_rule_for_unknown():
    assert (None, None) == rule_for("Lion", ["Optimizer"])
    assert (None, None) == rule_for("Lion")


@pytest.mark.parametrize("name", sorted(torch_optimizers()))
def test_text_and_latex_render_with_default_hparams(name):
    rule = RULES[name]
    hparams = default_hparams(torch_optimizers()[name])
    text, latex = rule.text(hparams), rule.latex(hparams)
    assert "" != text.strip()
    assert "" != latex.strip()
    assert "θ" in text
    assert "-" not in text  # minus signs are U+2212
    assert latex.count("{") == latex.count("}")


@pytest.mark.parametrize("name", sorted(torch_optimizers()))
def test_symbols_name_real_hparams(name):
    hparams = default_hparams(torch_optimizers()[name])
    unknown = sorted(set(RULES[name].symbols) - set(hparams))
    assert [] == unknown


@pytest.mark.parametrize("name", sorted(torch_optimizers()))
def test_no_grad_leaves_param_unchanged(name):
    # LBFGS predicts only one iteration over a single parameter tensor
    hparams = {**default_hparams(torch_optimizers()[name]), "max_iter": 1, "params": 1}
    param = torch.arange(4.0, dtype=torch.float64).reshape(2, 2)
    assert torch.equal(param, RULES[name].predict(param, None, {}, hparams))


@pytest.mark.parametrize("name", sorted(torch_optimizers()))
def test_explain_with_no_grad(name):
    hparams = default_hparams(torch_optimizers()[name])
    assert ["w[0]: no gradient, the optimizer skips it = 1.5"] == RULES[name].explain("w[0]", 1.5, None, {}, hparams)


def test_rules_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RULES["SGD"].note = "changed"  # type: ignore[misc]


def test_public_surface():
    expected = ["RULES", "UNSUPPORTED", "CannotPredict", "Rule", "rule_for"]
    assert sorted(expected) == sorted(tracer.rules.__all__)
    assert issubclass(CannotPredict, Exception)
    assert all(isinstance(rule, Rule) for rule in RULES.values())


def test_docstring_examples():
    failures, _ = doctest.testmod(tracer.rules, verbose=False)
    assert 0 == failures


@pytest.mark.slow
def test_import_needs_only_torch():
    # import tracer.rules without running tracer/__init__.py (which loads the
    # Parquet stack): the rules themselves must need nothing beyond torch
    rules_dir = pathlib.Path(tracer.rules.__file__).parent
    code = (
        "import json, sys, types; "
        f"pkg = types.ModuleType('tracer'); pkg.__path__ = [{str(rules_dir.parent)!r}]; "
        "sys.modules['tracer'] = pkg; "
        "import tracer.rules; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('pandas', 'pyarrow', 'tracer'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    assert [] == [m for m in loaded if m != "tracer" and not m.startswith("tracer.rules")]


def test_rules_import_no_other_tracer_module():
    rules_dir = pathlib.Path(tracer.rules.__file__).parent
    offenders = [
        path.name
        for path in sorted(rules_dir.glob("*.py"))
        if re.search(r"^\s*(from|import)\s+(tracer\b|\.\.)", path.read_text(), flags=re.MULTILINE)
    ]
    assert [] == offenders
