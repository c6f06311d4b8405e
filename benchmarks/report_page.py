"""The HTML report of a long trace: time to build it, its size, and Chromium's time to open it.

Budget (issue: "the page for a 1,000-step trace of a 10-layer model opens in under 2 seconds
and stays under 10 MB"). The trace: an MLP of 10 × (Linear(32, 32) + ReLU), SGD with
momentum, default options (statistics for every tensor, values up to 1024 elements).

Run:  python benchmarks/report_page.py [--steps 1000] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import tracer


def make_trace(path: Path, steps: int) -> float:
    torch.manual_seed(0)
    layers = [m for _ in range(10) for m in (nn.Linear(32, 32), nn.ReLU())]
    model = nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    start = time.perf_counter()
    with tracer.trace(model, opt, path=path):
        for _ in range(steps):
            opt.zero_grad()
            model(torch.randn(16, 32)).pow(2).mean().backward()
            opt.step()
    return time.perf_counter() - start


def open_in_chromium(page: Path, profile: Path) -> float | None:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        return None
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--no-first-run", "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}"]  # fmt: skip
    blank = page.with_name("blank.html")
    blank.write_text("<!DOCTYPE html><title>blank</title>")

    def timed(target: Path) -> float:
        start = time.perf_counter()
        subprocess.run([binary, *flags, "--dump-dom", target.as_uri()], capture_output=True, timeout=120, check=True)
        return time.perf_counter() - start

    timed(blank)  # warm the browser's own files
    base = min(timed(blank) for _ in range(2))
    return max(min(timed(page) for _ in range(2)) - base, 0.0)  # the page's share of the time


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="50 steps: a smoke test")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    steps = 50 if args.quick else args.steps
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        traced_s = make_trace(tmp / "trace", steps)
        start = time.perf_counter()
        rep = tracer.report(tmp / "trace")
        report_s = time.perf_counter() - start
        start = time.perf_counter()
        html = rep.to_html()
        html_s = time.perf_counter() - start
        page = tmp / "report.html"
        page.write_text(html, encoding="utf-8")
        size_mb = page.stat().st_size / 1e6
        open_s = open_in_chromium(page, tmp / "profile")
    lines = [
        "## HTML report page (benchmarks/report_page.py)",
        "",
        f"{steps} steps of a 10-layer MLP, {len(rep.checks)} updates · torch {torch.__version__}",
        "",
        "| what | value | budget |",
        "|---|---|---|",
        f"| tracing the run | {traced_s:.1f} s | – |",
        f"| `tracer.report(path)` | {report_s:.2f} s | – |",
        f"| `Report.to_html()` (findings and plots included) | {html_s:.2f} s | – |",
        f"| page size | {size_mb:.2f} MB | < 10 MB |",
        "| Chromium opens the page (load time beyond a blank page) | "
        + (f"{open_s:.2f} s" if open_s is not None else "no Chromium here")
        + " | < 2 s |",
    ]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
