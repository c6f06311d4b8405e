"""Every rule's declared lines under every combination of its flags that torch accepts.

For each rule, the flags are the hparams its lines' conditions read
(`Rule.flags`); each is set off and on (``True``/``False``, or zero/nonzero)
in every combination the torch optimizer's constructor accepts. For each
combination the text and LaTeX must render without empty or broken lines, and
two float64 steps of the real torch optimizer are the oracle for ``predict``
and for the last number of ``explain``.
"""

import itertools
import json
import re

import pytest
import torch

from tracer.rules import RULES, CannotPredict

# the nonzero value a numeric flag takes when it is on
ON = {
    "momentum": 0.9,
    "dampening": 0.3,
    "weight_decay": 0.1,
    "lr_decay": 0.1,
    "initial_accumulator_value": 0.2,
    "line_search_fn": "strong_wolfe",
}
# explain shows these rules' element arithmetic only in part: the rest needs the whole tensor
PARTIAL_EXPLAIN = {"Adafactor", "LBFGS", "Muon"}
# settings under which a rule says it cannot predict, rather than predicting
CANNOT_PREDICT = {("LBFGS", "line_search_fn")}
LR = {"Muon": 0.02, "Adadelta": 0.5}


def defaults(name: str) -> dict:
    """The optimizer's default param group, JSON round-tripped as the tracer records it."""
    group = getattr(torch.optim, name)([torch.nn.Parameter(torch.zeros(2, 2))]).param_groups[0]
    return json.loads(json.dumps({k: v for k, v in group.items() if k != "params"}))


def setting(name: str, key: str, on: bool):
    """The value of flag ``key`` when it is on or off."""
    if isinstance(defaults(name)[key], bool):
        return on
    if key not in ON:
        raise AssertionError(f"add a nonzero value for {name}'s flag {key!r} to ON")
    return ON[key] if on else (None if isinstance(ON[key], str) else 0)


def accepted(name: str, flags: dict) -> dict | None:
    """The constructor keywords for ``flags``, or None where torch rejects the combination."""
    kwargs = {k: v for k, v in flags.items() if v != defaults(name)[k]}
    try:
        getattr(torch.optim, name)([torch.nn.Parameter(torch.zeros(2, 2))], **kwargs)
    except (ValueError, TypeError):  # e.g. Nesterov without momentum; AdamW's fixed decoupled decay
        return None
    return kwargs


def combinations() -> list:
    cases = []
    for name in sorted(RULES):
        keys = [key for key in RULES[name].flags() if key in defaults(name)]  # others: the test below
        for bits in itertools.product([False, True], repeat=len(keys)):
            flags = {key: setting(name, key, on) for key, on in zip(keys, bits)}
            kwargs = accepted(name, flags)
            if kwargs is not None:
                on_keys = [key for key, on in zip(keys, bits) if on]
                cases.append(pytest.param(name, flags, kwargs, id=f"{name}-{'+'.join(on_keys) or 'off'}"))
    return cases


CASES = combinations()


@pytest.mark.parametrize("name", sorted(RULES))
def test_flags_are_hparams_of_the_param_group(name):
    unknown = sorted(set(RULES[name].flags()) - set(defaults(name)))
    assert [] == unknown


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_flag_changes_what_the_rule_says(name):
    rendered = {}
    for case in CASES:
        if case.values[0] == name:
            flags = case.values[1]
            hparams = {**defaults(name), **flags}
            rendered[tuple(sorted(flags.items()))] = (RULES[name].text(hparams), RULES[name].latex(hparams))
    for key in set(RULES[name].flags()) & set(defaults(name)):
        if len({dict(flags)[key] for flags in rendered}) < 2:
            continue  # torch accepts one setting only (AdamW's decoupled weight decay)
        differs = [
            rendered[a] != rendered[b]
            for a, b in itertools.combinations(rendered, 2)
            if [k for (k, x), (_, y) in zip(a, b) if x != y] == [key]
        ]
        assert any(differs), f"{name}'s flag {key} never changes its text or LaTeX"


@pytest.mark.parametrize(("name", "flags", "kwargs"), CASES)
def test_text_and_latex_render(name, flags, kwargs):
    hparams = {**defaults(name), **flags}
    text, latex = RULES[name].text(hparams), RULES[name].latex(hparams)
    lines = text.split("\n")
    assert [] == [line for line in lines if not line.strip() or line != line.rstrip()]
    assert "θ" in text
    assert None is re.search(r"(?<![A-Za-z])-|-(?![A-Za-z])", text)  # minus signs are U+2212; hyphens are words
    assert "{" not in text and "}" not in text
    assert latex.count("{") == latex.count("}")
    rows = latex.removeprefix(r"\begin{aligned}").removesuffix(r"\end{aligned}").split(r" \\ ")
    assert [] == [row for row in rows if row in ("", "&")]
    assert (len(rows) > 1) == latex.startswith(r"\begin{aligned}")


@pytest.mark.parametrize(("name", "flags", "kwargs"), CASES)
def test_latex_converts_to_mathml(name, flags, kwargs):
    converter = pytest.importorskip("latex2mathml.converter")
    hparams = {**defaults(name), **flags}
    assert "<math" in converter.convert(RULES[name].latex(hparams))


def replay(name: str, kwargs: dict, helpers) -> tuple[list, int]:
    """Two float64 steps of the real optimizer; the records and how many tensors it holds."""
    cls = getattr(torch.optim, name)
    lr = LR.get(name, 0.05)
    if name == "SparseAdam":
        torch.manual_seed(0)
        model = torch.nn.Embedding(6, 3, sparse=True, dtype=torch.float64)
        batches = iter(torch.tensor([[1, 2, 2], [4, 1, 5]]))
        optimizer = cls(model.parameters(), lr=lr, **kwargs)
        with torch.sparse.check_sparse_tensor_invariants():
            return helpers.replay_steps(model, optimizer, lambda: model(next(batches)).sin().sum(), steps=2), 1
    single = name in ("Muon", "LBFGS")  # Muon takes matrices only; LBFGS is predicted over one tensor
    model, loss_fn = helpers.tiny_problem(torch.float64, bias=not single, fixed_batch=name == "LBFGS")
    if name == "LBFGS":
        kwargs = {**kwargs, "max_iter": 1}
    optimizer = cls(model.parameters(), lr=lr, **kwargs)
    records = helpers.replay_steps(model, optimizer, loss_fn, steps=2, closure=name == "LBFGS")
    return records, len(list(model.parameters()))


@pytest.mark.parametrize(("name", "flags", "kwargs"), CASES)
def test_predict_and_explain_follow_torch(name, flags, kwargs, helpers):
    rule = RULES[name]
    records, count = replay(name, kwargs, helpers)
    cannot = any((name, key) in CANNOT_PREDICT and on for key, on in flags.items())
    for rec in records:
        hparams = {**rec.hparams, "params": count}
        if cannot:
            with pytest.raises(CannotPredict):
                rule.predict(rec.param, rec.grad, rec.state, hparams)
            continue
        predicted = rule.predict(rec.param, rec.grad, rec.state, hparams)
        torch.testing.assert_close(predicted, rec.actual, rtol=1e-12, atol=1e-14)
        for i in range(rec.param.numel()):
            index = tuple(int(j) for j in torch.unravel_index(torch.tensor(i), rec.param.shape))
            label = f"{rec.name}{list(index)}"
            grad = None if rec.grad is None else rec.grad[index].item()
            state = helpers.element_state(rec.state, rec.param, index)
            lines = rule.explain(label, rec.param[index].item(), grad, state, hparams)
            assert [] != lines
            assert [] == [line for line in lines if "{" in line or "}" in line or not line.strip()]
            assert lines[-1].startswith(f"{label}: ")
            if name not in PARTIAL_EXPLAIN:
                assert pytest.approx(predicted[index].item(), rel=6e-6, abs=1e-300) == helpers.final_number(lines[-1])
