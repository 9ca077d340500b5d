"""Benchmark: ``StreamingDetector.process`` alone (no Kafka), events/s on batches of 5,000 over 1,000 series.

    .venv/bin/python benchmarks/bench_detector.py [many-to-many|many-to-one]

Untrained model, default ``DetectorConfig``, 1 torch thread; the first 5 of 40 batches are not timed.
"""

import sys
import time

import numpy as np
import torch

from models.detection.detector import DetectorConfig, StreamingDetector
from models.forecasting.bundle import ModelBundle
from models.forecasting.forecasters import ForecasterConfig, build_forecaster

torch.manual_seed(0)
torch.set_num_threads(1)
kind = sys.argv[1] if len(sys.argv) > 1 else "many-to-many"
cfg = ForecasterConfig(kind=kind, window=32, hidden=32)
b = ModelBundle(name="b", kind=kind, config=cfg, forecaster=build_forecaster(cfg).eval(), version=1)
det = StreamingDetector(b, DetectorConfig())
S, B, R = 1000, 5000, 40
rng = np.random.default_rng(0)
ids = [f"s{i}" for i in range(S)]
t0 = 1.7e9
n = 0
times = []
for r in range(R):
    sidx = rng.integers(0, S, B)
    series = [ids[i] for i in sidx]
    ts = t0 + r * 60.0 + np.arange(B) * 1e-3
    vals = np.sin(ts / 300.0 + sidx) + 0.1 * rng.normal(size=B)
    s = time.perf_counter()
    det.process(series, ts, vals)
    times.append(time.perf_counter() - s)
    n += B
w = sorted(times[5:])
print(f"{kind}: {B * len(w) / sum(w):,.0f} events/s (median batch {1e3 * w[len(w) // 2]:.1f} ms)")
