"""``tsad backtest``: replay NAB-format series through the live detector and score them NAB-style."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("backtest")(backtest)


def backtest(
    paths: list[Path] = typer.Argument(..., exists=True, help="NAB CSV files or directories holding them."),
    labels: Path = typer.Option(..., "--labels", exists=True, dir_okay=False, help="NAB combined_windows.json."),
    out: Path = typer.Option(None, "--out", help="Write NAB-format results under OUT/DETECTOR/."),
    detector: str = typer.Option("tsad", "--detector", help="Detector name used in the NAB layout."),
    plot: Path = typer.Option(None, "--plot", help="Write one PNG per series under this directory."),
    retrain_every: int = typer.Option(0, "--retrain-every", min=0,
                                      help="Re-fit on everything seen so far every N rows after probation (0: never)."),
    workers: int = typer.Option(2, "--workers", min=1, help="Parallel worker processes (1 torch thread each)."),
    kind: str = typer.Option("many-to-many", help="Forecaster kind."),
    window: int = typer.Option(32, min=2, help="Model window."),
    hidden: int = typer.Option(32, min=1, help="LSTM hidden size."),
    epochs: int = typer.Option(10, min=1, help="Epochs of the probation fit."),
    retrain_epochs: int = typer.Option(3, min=1, help="Epochs of each re-fit (warm-started)."),
    detector_json: str = typer.Option("{}", "--detector-config", help="DetectorConfig overrides as JSON."),
    post_json: str = typer.Option("{}", "--post-config", help="LikelihoodConfig overrides as JSON (the likelihood step)."),
    seed: int = typer.Option(0, help="Training seed."),
) -> None:
    """Replay each series in time order through StreamingDetector (NAB rules) and print NAB scores."""
    import time

    from rich.console import Console

    from pipeline.backtest.output import write_nab_csv, write_scores
    from pipeline.backtest.replay import ReplayConfig, find_csvs, run_corpus
    from pipeline.backtest.report import corpus_report, render

    console = Console()
    try:
        windows = json.loads(labels.read_text())
        cfg = ReplayConfig(kind=kind, window=window, hidden=hidden, epochs=epochs, retrain_every=retrain_every,
                           retrain_epochs=retrain_epochs, seed=seed,
                           detector=json.loads(detector_json), post=json.loads(post_json))
        from pipeline.backtest.replay import detector_config

        detector_config(cfg)  # fail fast on bad overrides
    except (ValueError, TypeError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    files = find_csvs(paths)
    if not files:
        raise typer.BadParameter("no CSV files found")
    t0 = time.perf_counter()
    results, errors = run_corpus(files, windows, cfg, workers=workers)
    wall = time.perf_counter() - t0
    for err in errors:
        console.print(f"[red]failed[/red] {err}")
    if not results:
        raise typer.Exit(1)
    report = corpus_report(results)
    report["timing"]["wall_seconds"] = wall
    report["config"] = cfg.to_dict()
    render(report, console)
    console.print(f"{len(results)} files, {report['rows']:,} rows in {wall:.1f}s wall "
                  f"(fit {report['timing']['fit_seconds']:.1f}s, replay {report['timing']['replay_seconds']:.1f}s CPU, "
                  f"{report['timing']['retrains']} retrains)")
    if out is not None:
        for r in results:
            write_nab_csv(r, out, detector)
        console.print(f"NAB results: {out / detector}  scores: {write_scores(report, out, detector)}")
    if plot is not None:
        from pipeline.backtest.plots import plot_series

        thr = report["nab"]["standard"]["optimised"]["threshold"]
        for r in results:
            plot_series(r, plot, thr)
        console.print(f"plots: {plot}")
    if errors:
        raise typer.Exit(2)
