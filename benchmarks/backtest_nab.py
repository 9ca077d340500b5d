"""Benchmark: backtest the whole NAB subset and print the NAB scores, P/R/F1 and wall time.

    .venv/bin/python benchmarks/backtest_nab.py [--data DIR] [--workers 2] [--kind many-to-many] [--calendar]
        [--model-source per-file|fleet|fleet-finetune] [--warmup default|probation]
        [--retrain-every 0] [--post '{"threshold": 0.5}'] [--detector-config '{}'] [--out DIR] [--plot DIR]

Defaults to the repo's data/nab (a few files); the full 51-file subset needs an explicit
``--data /work/shared/data/nab`` (or wherever a NAB checkout lives). Prints the same tables
as ``tsad backtest`` plus one line of JSON with the headline numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.backtest.replay import ReplayConfig, SeriesResult

REPO = Path(__file__).resolve().parent.parent


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data",
        type=Path,
        default=REPO / "data" / "nab",
        help="NAB directory with data/ and labels/ (default: the repo's data/nab)",
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--kind", choices=("many-to-many", "many-to-one"), default="many-to-many")
    ap.add_argument("--retrain-every", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument(
        "--calendar",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="time-of-day/week input features (models.forecasting.calendar)",
    )
    ap.add_argument(
        "--calendar-week",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --calendar: include the day-of-week columns",
    )
    ap.add_argument(
        "--model-source",
        choices=("per-file", "fleet", "fleet-finetune"),
        default="fleet-finetune",
        help="fleet: one model trained on the probation rows of all files serves every file; "
        "fleet-finetune (default): it is fine-tuned on each file's probation rows",
    )
    ap.add_argument("--warmup", choices=("default", "probation"), default="default")
    ap.add_argument("--seed", type=int, default=0, help="training seed (run a few to see the run-to-run spread)")
    ap.add_argument("--post", default="{}")
    ap.add_argument(
        "--fit", default="{}", help="extra models.forecasting.training.fit kwargs as JSON (batch_size, lr, ...)"
    )
    ap.add_argument("--model", default="{}", help="extra ForecasterConfig fields as JSON (residual, layers, ...)")
    ap.add_argument("--detector-config", default="{}")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--save-arrays", type=Path, default=None, help="pickle the SeriesResults (for tuning)")
    return ap


def _replay_config(args: argparse.Namespace) -> ReplayConfig:
    from pipeline.backtest.replay import ReplayConfig

    return ReplayConfig(
        kind=args.kind,
        window=args.window,
        hidden=args.hidden,
        calendar=args.calendar,
        calendar_week=args.calendar_week,
        seed=args.seed,
        epochs=args.epochs,
        retrain_every=args.retrain_every,
        post=json.loads(args.post),
        detector=json.loads(args.detector_config),
        fit=json.loads(args.fit),
        model=json.loads(args.model),
        model_source=args.model_source,
        warmup=args.warmup,
    )


def _write_outputs(args: argparse.Namespace, results: list[SeriesResult], rep: dict[str, Any]) -> None:
    """``--out`` (NAB CSVs and scores), ``--plot`` (one figure per file), ``--save-arrays`` (pickle)."""
    from pipeline.backtest.output import write_nab_csv, write_scores

    if args.out:
        for r in results:
            write_nab_csv(r, args.out, "tsad")
        write_scores(rep, args.out, "tsad")
    if args.plot:
        from pipeline.backtest.plots import plot_series

        for r in results:
            plot_series(r, args.plot, rep["nab"]["standard"]["optimised"]["threshold"])
    if args.save_arrays:
        import pickle

        args.save_arrays.write_bytes(pickle.dumps(results))


def _headline(rep: dict[str, Any], wall: float) -> dict[str, Any]:
    """The one line of JSON: files, rows, times, NAB scores (own and optimised threshold), F1."""
    head = {
        p: {"own": round(d["own"]["score"], 1), "optimised": round(d["optimised"]["score"], 1)}
        for p, d in rep["nab"].items()
    }
    return {
        "files": rep["files"],
        "rows": rep["rows"],
        "wall_seconds": round(wall, 1),
        "fit_seconds": round(rep["timing"]["fit_seconds"], 1),
        "nab": head,
        "f1_own": round(rep["prf"]["own"]["f1"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)

    from pipeline.backtest.replay import find_csvs, run_corpus
    from pipeline.backtest.report import corpus_report, render

    data = args.data
    if not (data / "labels" / "combined_windows.json").is_file():
        ap.error(f"{data}: no labels/combined_windows.json (pass --data with a NAB directory)")
    labels = json.loads((data / "labels" / "combined_windows.json").read_text())
    files = find_csvs([data / "data"])
    cfg = _replay_config(args)
    t0 = time.perf_counter()
    fleet = None
    if cfg.model_source != "per-file":
        from pipeline.backtest.fleet import train_fleet

        fleet = train_fleet(files, cfg, threads=1)
    results, errors = run_corpus(files, labels, cfg, workers=args.workers, fleet=fleet)
    wall = time.perf_counter() - t0
    for e in errors:
        print("FAILED", e, file=sys.stderr)
    rep = corpus_report(results)
    rep["timing"]["wall_seconds"] = wall
    rep["config"] = cfg.to_dict()
    render(rep)
    _write_outputs(args, results, rep)
    print(json.dumps(_headline(rep, wall)))
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
