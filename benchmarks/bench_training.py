"""Training throughput (windows/s) for both forecaster kinds, plus ``step()`` events/s.

Usage: ``python benchmarks/bench_training.py [--device auto|cpu|cuda] [--series 8] [--length 4000]
[--epochs 3] [--hidden 64] [--window 64] [--threads N]``. Runs on CPU here, on CUDA when present
(``--device auto``). Prints one line per measurement: ``name value unit``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from models.forecasting.forecasters import ForecasterConfig, build_forecaster
from models.forecasting.training import fit, resolve_device


def synthetic(n_series: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    return {
        f"s{i}": rng.uniform(0.5, 3) * np.sin(2 * np.pi * t / rng.integers(20, 200)) + 0.1 * rng.normal(size=length)
        for i in range(n_series)
    }


def bench_fit(kind: str, args, device: str) -> float:
    cfg = ForecasterConfig(kind=kind, window=args.window, hidden=args.hidden, horizon=args.horizon)
    data = synthetic(args.series, args.length)
    fit(cfg, data, epochs=1, device=device, progress=False, num_threads=args.threads, patience=10**6)  # warm-up
    _, report = fit(
        cfg, data, epochs=args.epochs, device=device, progress=False, num_threads=args.threads, patience=10**6
    )
    return report.windows_per_s


@torch.no_grad()
def bench_step(args, n_series: int = 1000, steps: int = 200) -> float:
    torch.set_num_threads(args.threads or 1)
    model = build_forecaster(ForecasterConfig(kind="many-to-many", hidden=args.hidden, horizon=args.horizon)).eval()
    state = model.init_state(n_series)
    x = torch.randn(n_series, 1)
    for _ in range(20):
        _, state = model.step(x, state)
    t0 = time.perf_counter()
    for _ in range(steps):
        _, state = model.step(x, state)
    return steps * n_series / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--series", type=int, default=8)
    p.add_argument("--length", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--horizon", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default min(2, cores))")
    args = p.parse_args()
    dev = resolve_device(args.device)
    print(
        f"# device={dev} torch={torch.__version__} series={args.series}x{args.length} window={args.window} "
        f"hidden={args.hidden} horizon={args.horizon} epochs={args.epochs} threads={args.threads or 'default'}"
    )
    for kind in ("many-to-one", "many-to-many"):
        print(f"train_{kind.replace('-', '_')}_{dev.type} {bench_fit(kind, args, str(dev)):.0f} windows/s", flush=True)
    print(f"step_many_to_many_1000_series_cpu {bench_step(args):.0f} events/s")


if __name__ == "__main__":
    main()
