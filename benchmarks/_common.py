"""Shared pieces of the benchmark scripts: the workloads W1–W3, timing, sizes, tables.

Not part of the ``tracer`` package; imported by the scripts next to it.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

THREADS = 2  # the reference machine has 2 cores; pin torch so runs compare


def setup_torch(seed: int = 0) -> None:
    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)


class Workload(NamedTuple):
    """A model, its optimizer and one training step (the user's loop body, unchanged)."""

    name: str
    description: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step: Callable[[], None]


def _loop(model: torch.nn.Module, opt: torch.optim.Optimizer, loss_fn: Callable, x, y) -> Callable[[], None]:
    def step() -> None:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    return step


def mlp(width: int = 1024, depth: int = 4) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers)


def w1() -> Workload:
    """W1: MLP, 4 × Linear(1024, 1024)+ReLU, batch 64, SGD momentum, MSE."""
    model = mlp(1024, 4)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, y = torch.randn(64, 1024), torch.randn(64, 1024)
    return Workload(
        "W1",
        "MLP 4×Linear(1024,1024)+ReLU, b64, SGD+momentum, MSE",
        model,
        opt,
        _loop(model, opt, torch.nn.functional.mse_loss, x, y),
    )


def w2() -> Workload:
    """W2: small CNN (2 conv + linear) on 32×32×3, batch 32, Adam, cross-entropy."""
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(64 * 8 * 8, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    return Workload(
        "W2",
        "CNN 2×conv+linear, 32×32×3, b32, Adam, cross-entropy",
        model,
        opt,
        _loop(model, opt, torch.nn.functional.cross_entropy, x, y),
    )


def w3() -> Workload:
    """W3: one TransformerEncoderLayer(256, 4 heads, ff 1024), seq 64, batch 16, AdamW."""
    model = torch.nn.TransformerEncoderLayer(256, 4, dim_feedforward=1024, batch_first=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(16, 64, 256), torch.randn(16, 64, 256)
    return Workload(
        "W3",
        "TransformerEncoderLayer(256, 4 heads, ff 1024), seq 64, b16, AdamW, MSE",
        model,
        opt,
        _loop(model, opt, torch.nn.functional.mse_loss, x, y),
    )


WORKLOADS: dict[str, Callable[[], Workload]] = {"W1": w1, "W2": w2, "W3": w3}


# ----------------------------------------------------------------------------- measuring


def timed_steps(step: Callable[[], None], n: int, *, cpu: bool = False) -> Any:
    """Wall seconds per call of ``step``, ``n`` calls; with ``cpu``, also process CPU seconds."""
    times, cpu_times = [], []
    for _ in range(n):
        t0, p0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - p0)
    return (times, cpu_times) if cpu else times


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def dir_parquet_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*.parquet"))


_ITEMSIZE = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
    "complex64": 8,
    "complex128": 16,
}


def itemsize(dtype: str) -> int:
    return _ITEMSIZE.get(dtype, 4)


def rss_bytes() -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of this process, from /proc/self/status."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def parquet_write_rate(nbytes: int, directory: Path, repeats: int = 3) -> float:
    """Bytes/s of a plain ``pyarrow.parquet.write_table`` of ``nbytes`` float32 bytes.

    No compression, no dictionary: the raw rate the disk and the Parquet encoder allow.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = max(nbytes // 4, 1)
    table = pa.table({"values": pa.array(np.random.default_rng(0).standard_normal(n, dtype=np.float32))})
    rates = []
    for i in range(repeats):
        file = directory / f"_rate{i}.parquet"
        t0 = time.perf_counter()
        pq.write_table(table, file, compression="none", use_dictionary=False)
        rates.append(n * 4 / (time.perf_counter() - t0))
        file.unlink()
    return median(rates)


def read_bandwidth(quick: bool = False) -> float:
    """Bytes/s of one read of a 256 MB float32 tensor (``Tensor.sum``, torch's threads), best
    of 5: the machine's memory read bandwidth as torch's fastest reduction sees it."""
    n = (16 if quick else 64) << 20
    x = torch.ones(n)
    x.sum()
    best = min(timed_steps(x.sum, 3 if quick else 5))
    return n * 4 / best


# ----------------------------------------------------------------------------- reporting


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()}-core {cpu}, {platform.system()} {platform.release()}"


def header(title: str) -> str:
    import pyarrow

    stamp = time.strftime("%Y-%m-%d %H:%M %Z")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    env = [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith(("OMP_", "MALLOC_", "MKL_"))]
    return (
        f"## {title}\n\n{stamp} · {machine()} · torch {torch.__version__} "
        f"({torch.get_num_threads()} threads) · pyarrow {pyarrow.__version__} · "
        f"Python {platform.python_version()} · load average at the end {load}"
        + (f" · {' '.join(env)}" if env else "")
        + "\n"
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(value: float, limit: float, fmt: str = "{:.2f}") -> str:
    """``met`` or ``NOT met``, with the value and the limit."""
    ok = value <= limit
    return f"{'met' if ok else '**NOT met**'} ({fmt.format(value)} vs ≤ {fmt.format(limit)})"


def mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:.1f}"
