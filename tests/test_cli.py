"""The ``tracer`` command line: in-process through ``main()``, and a few real subprocesses."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _reference import make_reference, train_reference

import tracer
from tracer._cli import _parser, main


def make_trace(path, *, steps=2, lr=0.01, nan_at=None):
    """The reference example (tests/_reference.py); ``nan_at``: poison the target at that step."""
    model, x, y, loss_fn, optimizer = make_reference()
    optimizer.param_groups[0]["lr"] = lr
    with tracer.trace(model, optimizer, path=path) as run:
        for step in range(steps):
            target = torch.full_like(y, float("nan")) if step == nan_at else y
            train_reference(model, x, target, loss_fn, optimizer)
    return run.path


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return {
        "ref": make_trace(root / "ref"),
        "same": make_trace(root / "same"),
        "lr": make_trace(root / "lr", lr=0.02),
        "three": make_trace(root / "three", steps=3),
        "nan": make_trace(root / "nan", steps=3, nan_at=1),
    }


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """Paths that are not readable traces, by what is wrong with them."""
    root = tmp_path_factory.mktemp("bad")
    (root / "empty").mkdir()
    (root / "other").mkdir()
    (root / "other" / "notes.txt").write_text("not a trace\n")
    (root / "file.txt").write_text("not a directory\n")
    corrupt = root / "corrupt"
    make_trace(corrupt, steps=1)
    next(corrupt.glob("*.parquet")).write_bytes(b"PAR1 this is not parquet")
    return {
        "missing": (root / "missing", "does not exist"),
        "empty directory": (root / "empty", "is not a trace"),
        "other directory": (root / "other", "is not a trace"),
        "file": (root / "file.txt", "is not a trace"),
        "corrupt parquet": (corrupt, "corrupt trace file"),
    }


def run_main(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- every subcommand (for the fuzz tests)


def subcommands(parser: argparse.ArgumentParser | None = None) -> list[tuple[str, ...]]:
    """Every command ``tracer --help`` lists, as its words: ``("summary",)``, ``("export", "wandb")``."""
    parser = parser or _parser()
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for word, sub in action.choices.items():
                found += [(word, *rest) for rest in subcommands(sub)] or [(word,)]
    return found


def command_line(words: tuple[str, ...], trace: Path, other: Path, scratch: Path) -> list[str]:
    """``words`` with every argument filled: the first trace is ``trace``, further ones ``other``,
    directories and files to write go under ``scratch``."""
    parser = _parser()
    for word in words:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
    argv, traces = list(words), iter([trace])
    for action in parser._actions:
        if action.option_strings and not action.required:
            continue
        if action.dest in ("logdir", "output", "dir"):
            value = [str(scratch / action.dest)]
        else:
            value = [str(next(traces, other))]
            if action.nargs in ("+", "*"):
                value.append(str(other))
        argv += [action.option_strings[0], *value] if action.option_strings else value
    if words == ("export", "wandb"):
        argv += ["--dir", str(scratch / "wandb")]  # offline, and not in the working directory
    if words == ("compare",):
        argv += ["-o", str(scratch / "compare.html")]  # not the default, in the working directory
    return argv


def run_quietly(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` in this process: exit code, stdout, stderr (an exception propagates)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def assert_one_error_line(argv: list[str], *says: str) -> str:
    """``argv`` exits 2 with exactly one ``tracer: error:`` line on stderr (that says ``says``)."""
    code, out, err = run_quietly(argv)
    assert (2, 1, "") == (code, len(err.splitlines()), out), (argv, code, err)
    assert err.startswith("tracer: error: ") and "Traceback" not in err, (argv, err)
    for text in says:
        assert text in err, (argv, text, err)
    return err


def assert_clean_or_one_error_line(argv: list[str]) -> int:
    """``argv`` either runs (exit 0/1, nothing on stderr but a failed ``--check``) or exits 2
    with one ``tracer: error:`` line; never a traceback. Returns the exit code."""
    code, _, err = run_quietly(argv)
    lines = err.splitlines()
    if code == 2:
        assert 1 == len(lines) and lines[0].startswith("tracer: error: "), (argv, err)
    else:
        assert code in (0, 1), (argv, code, err)
        assert not lines or (1 == len(lines) and lines[0].startswith("tracer: check failed: ")), (argv, err)
    return code


def test_subcommands_are_every_command_of_the_help(capsys):
    found = subcommands()
    for words in [("summary",), ("diff",), ("report",), ("diagnose",), ("export", "tensorboard"), ("export", "wandb"),
                  ("compare",)]:  # fmt: skip
        assert words in found
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out.split("commands:")[1]
    assert {w[0] for w in found} <= set(listed.split())


# --------------------------------------------------------------------------- summary


def test_summary(capsys, traces):
    code, out, err = run_main(capsys, "summary", traces["ref"])
    assert (0, "") == (code, err)
    assert "steps      2 (0 to 1)" in out
    assert "rows       20;" in out and "on disk" in out
    assert "grad 4" in out and "update 4" in out
    assert "grad             weight, bias" in out
    assert "non-finite none" in out
    assert "25" in out and "19.36" in out  # loss per step
    assert "22.3607" in out and "0.223607" in out  # grad and update norms of weight


def test_summary_json(capsys, traces):
    code, out, _ = run_main(capsys, "summary", traces["ref"], "--json")
    data = json.loads(out)
    assert 0 == code
    assert [0, 1] == data["steps"]
    assert 20 == data["rows"] and data["bytes"] > 0
    assert [{"step": 0, "loss": 25.0, "calls": 1}, {"step": 1, "loss": 19.36, "calls": 1}] == [
        {**r, "loss": round(r["loss"], 10)} for r in data["loss"]
    ]
    weight = next(p for p in data["parameters"] if p["name"] == "weight")
    assert 500 == round(weight["grad"]["first"] ** 2)
    assert data["first_nonfinite"] is None


def test_summary_first_nonfinite(capsys, traces):
    code, out, _ = run_main(capsys, "summary", traces["nan"])
    assert 0 == code
    assert "non-finite first at step 1: loss call 0, 1 of 1 elements, first at index () = nan" in out
    code, out, _ = run_main(capsys, "summary", traces["nan"], "--json")
    data = json.loads(out, parse_constant=pytest.fail)  # strict JSON: no bare NaN
    assert {"step": 1, "kind": "loss", "value": "nan"}.items() <= data["first_nonfinite"].items()
    assert "nan" == data["loss"][1]["loss"]


def test_summary_of_a_long_run_elides_the_middle_steps(capsys, tmp_path):
    code, out, _ = run_main(capsys, "summary", make_trace(tmp_path / "long", steps=25))
    assert 0 == code
    loss_table = out.split("loss per step")[1].split("norms per parameter")[0]
    assert "  ...\n" in loss_table
    assert 21 == len([line for line in loss_table.splitlines() if line.strip()[:1].isdigit()]) + 1


# --------------------------------------------------------------------------- diff


def test_diff_close(capsys, traces):
    code, out, err = run_main(capsys, "diff", traces["ref"], traces["same"])
    assert (0, "") == (code, err)
    assert out.startswith("no divergence")


def test_diff_divergence(capsys, traces):
    code, out, _ = run_main(capsys, "diff", traces["ref"], traces["lr"])
    assert 1 == code
    assert f"a: {traces['ref']}" in out
    assert "traces diverge at step 0: update 'weight' call 0: values differ at index (0, 0)" in out
    assert "10 later rows also differ" in out


def test_diff_options(capsys, traces):
    # a changed learning rate is a divergence in itself; the tolerances say whether values differ too
    code, out, _ = run_main(capsys, "diff", traces["ref"], traces["lr"], "--atol", "10", "--rtol", "0")
    assert 1 == code and "no value differs beyond the tolerances" in out
    assert "no value differs" not in run_main(capsys, "diff", traces["ref"], traces["lr"])[1]
    code, out, _ = run_main(capsys, "diff", traces["ref"], traces["lr"], "--kind", "loss", "--kind", "grad")
    assert 1 == code and "step 1: loss" in out


def test_diff_missing_step(capsys, traces):
    code, out, _ = run_main(capsys, "diff", traces["three"], traces["ref"])
    assert 1 == code
    assert "traces diverge at step 2" in out and "b has no step 2" in out


# --------------------------------------------------------------------------- report


def test_report_default_is_the_compact_text(capsys, traces):
    code, out, err = run_main(capsys, "report", traces["ref"])
    assert (0, "") == (code, err)
    assert str(tracer.report(traces["ref"])) == out  # on a terminal and piped alike
    assert "Update rules" in out and "$$" not in out and "\\theta" not in out  # no raw LaTeX


def test_report_step_or_name_that_matches_nothing_is_bad_input(traces):
    ref = str(traces["three"])
    assert_one_error_line(["report", ref, "--step", "500"], f"--step 500 matches no step of {ref} (it has steps 0–2)")
    assert_one_error_line(["report", ref, "--name", "fc3*"], "--name 'fc3*' matches no parameter of", "(closest: ")
    assert_one_error_line(["report", ref, "--name", "weigth"], "(closest: 'weight'")
    assert 0 == run_quietly(["report", ref, "--step", "2", "--name", "w*"])[0]


def test_every_description_ends_with_one_full_stop(capsys):
    for words in subcommands():
        with pytest.raises(SystemExit):
            main([*words, "--help"])
        out = capsys.readouterr().out
        description = out.split("\n\n")[1]
        assert description.endswith(".") and not description.endswith(".."), (words, description)
    with pytest.raises(SystemExit):
        main(["diagnose", "--help"])
    assert "dead units, the loss trend and more.\n" in capsys.readouterr().out


def test_report_html_to_file(capsys, traces, tmp_path):
    target = tmp_path / "report.html"
    code, out, _ = run_main(capsys, "report", traces["ref"], "--format", "html", "-o", target, "--step", "0")
    assert 0 == code
    assert f"wrote {target}" in out
    assert "<html" in target.read_text().lower()


def test_report_check(capsys, traces, tmp_path):
    assert 0 == run_main(capsys, "report", traces["ref"], "--check", "--name", "w*")[0]
    model, x, y, loss_fn, _ = make_reference()
    optimizer = Manual(model.parameters())
    with tracer.trace(model, optimizer, path=tmp_path / "manual") as run:
        train_reference(model, x, y, loss_fn, optimizer)
    code, _, err = run_main(capsys, "report", run.path, "--check")
    assert 1 == code
    assert "tracer: check failed: 2 of 2 updates" in err


class Manual(torch.optim.Optimizer):
    """An optimizer tracer has no rule for, that the command line cannot replay."""

    def __init__(self, params):
        super().__init__(params, {"lr": 0.01})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                p.sub_(group["lr"] * p.grad)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("command", ["summary", "diff-a", "diff-b", "report"])
def test_bad_input_is_one_line_and_exit_2(capsys, traces, bad, command):
    for label, (path, says) in bad.items():
        argv = {
            "summary": ["summary", path],
            "diff-a": ["diff", path, traces["ref"]],
            "diff-b": ["diff", traces["ref"], path],
            "report": ["report", path],
        }[command]
        code, out, err = run_main(capsys, *argv)
        assert 2 == code, label
        assert "" == out, label
        assert 1 == len(err.splitlines()), (label, err)
        assert err.startswith("tracer: error: "), label
        assert says in err, (label, err)
        assert "Traceback" not in err


@pytest.mark.parametrize("words", subcommands(), ids=" ".join)
def test_every_command_refuses_bad_input_in_one_line(traces, bad, tmp_path, words):
    for path, says in bad.values():
        assert_one_error_line(command_line(words, path, traces["ref"], tmp_path), says)


def test_unwritable_output_is_bad_input(capsys, traces, tmp_path):
    code, _, err = run_main(capsys, "report", traces["ref"], "-o", tmp_path / "no" / "such" / "dir.md")
    assert 2 == code
    assert err.startswith("tracer: error: ") and 1 == len(err.splitlines())


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert 2 == info.value.code
    with pytest.raises(SystemExit) as info:
        main(["diff", "only-one"])
    assert 2 == info.value.code
    capsys.readouterr()


@pytest.mark.parametrize("command", ["summary", "diff", "report"])
def test_help_ends_with_examples(capsys, command):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert 0 == info.value.code
    out = capsys.readouterr().out
    examples = out.rstrip().split("examples:\n")[-1].splitlines()
    assert "examples:" in out
    assert examples and all(line.strip().startswith(("tracer ", "python -m tracer ")) for line in examples)


# --------------------------------------------------------------------------- real processes


def _cli(*argv, module=True):
    command = [sys.executable, "-m", "tracer"] if module else [str(Path(sys.executable).parent / "tracer")]
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    return subprocess.run(
        [*command, *map(str, argv)], capture_output=True, text=True, timeout=120, env=env, check=False
    )


def test_python_m_tracer_bad_input(bad):
    path, _ = bad["corrupt parquet"]
    done = _cli("summary", path)
    assert 2 == done.returncode
    assert "" == done.stdout
    assert [f"tracer: error: corrupt trace file {str(next(path.glob('*.parquet')))!r}"] == [
        line[: line.index("':") + 1] for line in done.stderr.splitlines()
    ]


@pytest.mark.skipif(not (Path(sys.executable).parent / "tracer").exists(), reason="the console script is not installed")
def test_console_script_diff(traces):
    done = _cli("diff", traces["ref"], traces["lr"], module=False)
    assert 1 == done.returncode, done.stderr
    assert "traces diverge at step 0: update 'weight'" in done.stdout
    assert "" == done.stderr


# ---------------------------------------------------------------- each command reads its trace once


@pytest.fixture
def reads(monkeypatch):
    """Every read of a trace's rows (``tracer._reader.read_trace``), and every run of the update checks."""
    from tracer import _checks, _load

    seen: dict[str, list] = {"rows": [], "checks": []}
    read_trace, build_checks = _load.read_trace, _checks.build_checks

    def counted_read(path, **filters):
        seen["rows"].append(filters)
        return read_trace(path, **filters)

    def counted_checks(*args, **kwargs):
        seen["checks"].append(args)
        return build_checks(*args, **kwargs)

    monkeypatch.setattr(_load, "read_trace", counted_read)
    monkeypatch.setattr(_checks, "build_checks", counted_checks)
    return seen


def test_the_html_report_reads_the_trace_once_and_checks_once(capsys, traces, tmp_path, reads):
    pytest.importorskip("matplotlib")
    code, _, err = run_main(capsys, "report", traces["three"], "--format", "html", "-o", tmp_path / "page.html")
    assert 0 == code, err
    page = (tmp_path / "page.html").read_text(encoding="utf-8")
    assert "tracer-findings" in page and 5 == page.count('<figure class="tracer-plot"')  # findings and plots
    kinds = [r.get("kind") for r in reads["rows"]]
    # the statistics once, the optimizer's rows once, and (a model small enough to work by hand)
    # the forward pass's values once: never the same rows twice
    assert len(kinds) <= 3 and len({str(k) for k in kinds}) == len(kinds), reads["rows"]
    assert 1 == len(reads["checks"])  # the report's checks are the findings' checks


@pytest.mark.parametrize(
    "command",
    [("summary", "PATH"), ("diagnose", "PATH"), ("diff", "PATH", "SAME"), ("export", "tensorboard", "PATH", "LOGDIR")],
)
def test_every_command_reads_the_rows_it_needs_once(capsys, traces, tmp_path, reads, command):
    if "tensorboard" in command:
        pytest.importorskip("tensorboard")
    words = {"PATH": traces["three"], "SAME": traces["same"], "LOGDIR": tmp_path / "tb"}
    code, _, err = run_main(capsys, *(words.get(w, w) for w in command))
    assert code in (0, 1), err
    filters = [(str(r.get("kind")), str(r.get("step")), str(r.get("columns"))) for r in reads["rows"]]
    per_trace = 2 if "SAME" in command else 1
    assert len(set(filters)) * per_trace >= len(filters), reads["rows"]  # no read repeated (per trace)
