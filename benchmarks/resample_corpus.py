"""Write a NAB-layout corpus resampled to a coarser step (mean per bucket): short series to test on.

    .venv/bin/python benchmarks/resample_corpus.py /path/to/NAB /tmp/nab-hourly --rule 1h
    .venv/bin/tsad backtest /tmp/nab-hourly/data --labels /tmp/nab-hourly/labels/combined_windows.json --cv

The labels are timestamp windows, so they carry over unchanged. The 51 development files at one
hour are 104 to 1,643 rows long: the length of much ops telemetry, and too short for per-file models
(docs/detection.md, "A second check").
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path, help="NAB directory with data/ and labels/")
    ap.add_argument("dst", type=Path)
    ap.add_argument("--rule", default="1h", help="pandas resample rule (default 1h)")
    args = ap.parse_args(argv)

    import pandas as pd

    labels = args.src / "labels" / "combined_windows.json"
    if not labels.is_file():
        ap.error(f"{args.src}: no labels/combined_windows.json")
    (args.dst / "labels").mkdir(parents=True, exist_ok=True)
    shutil.copy(labels, args.dst / "labels" / "combined_windows.json")
    lengths = []
    for path in sorted((args.src / "data").rglob("*.csv")):
        df = pd.read_csv(path, parse_dates=["timestamp"])
        out = df.set_index("timestamp")["value"].resample(args.rule).mean().dropna().reset_index()
        target = args.dst / "data" / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        out.to_csv(target, index=False, date_format="%Y-%m-%d %H:%M:%S")
        lengths.append(len(out))
    print(f"{len(lengths)} files, {min(lengths)} to {max(lengths)} rows, under {args.dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
