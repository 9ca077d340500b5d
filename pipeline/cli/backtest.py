"""``tsad backtest``: replay NAB-format series through the live detector and score them NAB-style."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from pipeline.backtest.crossval import Candidate
    from pipeline.backtest.replay import ReplayConfig


def register(app: typer.Typer) -> None:
    app.command("backtest")(backtest)


# Long only in its signature (one typer option per flag); the body: flags -> ReplayConfig -> replay or --cv.
def backtest(
    paths: list[Path] = typer.Argument(..., exists=True, help="NAB CSV files or directories holding them."),
    labels: Path = typer.Option(..., "--labels", exists=True, dir_okay=False, help="NAB combined_windows.json."),
    out: Path = typer.Option(None, "--out", help="Write NAB-format results under OUT/DETECTOR/."),
    detector: str = typer.Option("tsad", "--detector", help="Detector name used in the NAB layout."),
    plot: Path = typer.Option(None, "--plot", help="Write one PNG per series under this directory."),
    retrain_every: int = typer.Option(
        0, "--retrain-every", min=0, help="Re-fit on everything seen so far every N rows after probation (0: never)."
    ),
    workers: int = typer.Option(2, "--workers", min=1, help="Parallel worker processes (1 torch thread each)."),
    kind: str = typer.Option("many-to-many", help="Forecaster kind."),
    window: int = typer.Option(32, min=2, help="Model window."),
    hidden: int = typer.Option(32, min=1, help="LSTM hidden size."),
    epochs: int = typer.Option(10, min=1, help="Epochs of the probation fit."),
    retrain_epochs: int = typer.Option(3, min=1, help="Epochs of each re-fit (warm-started)."),
    detector_json: str = typer.Option("{}", "--detector-config", help="DetectorConfig overrides as JSON."),
    post_json: str = typer.Option(
        "{}", "--post-config", help="LikelihoodConfig overrides as JSON (the likelihood step)."
    ),
    seed: int = typer.Option(0, help="Training seed."),
    model_source: str = typer.Option(
        "fleet-finetune",
        "--model-source",
        help="fleet-finetune (default, chosen by --cv: a model trained on the probation rows "
        "of all files, fine-tuned on each file's own) | fleet (that model as is) | "
        "per-file (fitted on each file's probation rows alone).",
    ),
    warmup: str = typer.Option(
        "default",
        "--warmup",
        help="default (the detector's and the likelihood's warm-ups) | "
        "probation (both capped at NAB's probation: a short series alerts right after it).",
    ),
    fleet_registry: Path = typer.Option(
        None,
        "--fleet-registry",
        help="With a fleet source: registry root holding "
        "the fleet model (default: train one on the files' probation rows).",
    ),
    fleet_model: str = typer.Option(
        None, "--fleet-model", help="With --fleet-registry: the model name (its champion)."
    ),
    cv: bool = typer.Option(
        False,
        "--cv",
        help="Leave-one-group-out cross-validation over the corpus's top-level "
        "folders: choices made on the other groups, scored on the held-out one.",
    ),
    seeds: str = typer.Option("0,1,2", "--seeds", help="With --cv: training seeds (comma-separated)."),
    rule: str = typer.Option(
        "one-se",
        "--rule",
        help="With --cv: how a candidate is chosen on the training groups: "
        "one-se (the fewest knobs within one standard error of the best) | max.",
    ),
    variants_json: str = typer.Option(
        "",
        "--variants",
        help="With --cv: JSON {name: replay overrides} (e.g. "
        '{"per-file": {"model_source": "per-file"}, "fleet": {"model_source": "fleet"}}): '
        "each candidate under each variant, one replay per variant and seed.",
    ),
    candidates_json: str = typer.Option(
        "",
        "--candidates",
        help="With --cv: JSON {name: LikelihoodConfig overrides} "
        "to compare (default: every on/off combination of the added steps).",
    ),
) -> None:
    """Replay each series in time order through StreamingDetector (NAB rules) and print NAB scores."""
    from rich.console import Console

    from pipeline.backtest.replay import ReplayConfig, detector_config, find_csvs

    console = Console()
    try:
        windows = json.loads(labels.read_text())
        cfg = ReplayConfig(
            kind=kind,
            window=window,
            hidden=hidden,
            epochs=epochs,
            retrain_every=retrain_every,
            retrain_epochs=retrain_epochs,
            seed=seed,
            model_source=model_source,
            warmup=warmup,
            fleet_registry=str(fleet_registry) if fleet_registry else None,
            fleet_model=fleet_model,
            detector=json.loads(detector_json),
            post=json.loads(post_json),
        )
        detector_config(cfg)  # fail fast on bad overrides
        cv_plan = _cv_plan(cfg, seeds, rule, variants_json, candidates_json) if cv else None
    except (ValueError, TypeError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    files = find_csvs(paths)
    if not files:
        raise typer.BadParameter("no CSV files found")
    if cv_plan is not None:
        seed_list, cands = cv_plan
        _cross_validate(files, windows, cfg, seed_list, cands, workers, out, console, rule)
        return
    _replay(files, windows, cfg, workers, out, detector, plot, console)


def _cv_plan(
    cfg: ReplayConfig, seeds: str, rule: str, variants_json: str, candidates_json: str
) -> tuple[list[int], list[Candidate]]:
    """``--cv``: the training seeds and the candidates (each under each variant); ValueError on bad flags."""
    from pipeline.backtest.crossval import candidates_from_json
    from pipeline.backtest.cv_run import with_variants

    seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    if rule not in ("one-se", "max"):
        raise ValueError(f"--rule must be one-se or max, got {rule!r}")
    variants = json.loads(variants_json) if variants_json.strip() else {}
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        raise ValueError("--variants must be a JSON object of {name: {ReplayConfig overrides}}")
    for over in variants.values():
        replace(cfg, **over)  # unknown fields or bad values fail here
    return seed_list, with_variants(candidates_from_json(candidates_json, base=cfg.post), variants)


def _replay(
    files: list[Path],
    windows: dict[str, Any],
    cfg: ReplayConfig,
    workers: int,
    out: Path | None,
    detector: str,
    plot: Path | None,
    console: Console,
) -> None:
    """Replay the corpus (fleet model first unless per-file), print the report, write results and plots."""
    import time

    from pipeline.backtest.replay import run_corpus
    from pipeline.backtest.report import corpus_report, render

    t0 = time.perf_counter()
    fleet = None
    if cfg.model_source != "per-file" and not cfg.fleet_registry:
        from pipeline.backtest.fleet import train_fleet

        fleet = train_fleet(files, cfg, threads=1)  # probation rows only: NAB lets a detector learn from them
    results, errors = run_corpus(files, windows, cfg, workers=workers, fleet=fleet)
    wall = time.perf_counter() - t0
    for err in errors:
        console.print(f"[red]failed[/red] {err}")
    if not results:
        raise typer.Exit(1)
    report = corpus_report(results)
    report["timing"]["wall_seconds"] = wall
    report["config"] = cfg.to_dict()
    render(report, console)
    console.print(
        f"{len(results)} files, {report['rows']:,} rows in {wall:.1f}s wall "
        f"(fit {report['timing']['fit_seconds']:.1f}s, replay {report['timing']['replay_seconds']:.1f}s CPU, "
        f"{report['timing']['retrains']} retrains)"
    )
    _write_outputs(results, report, out, detector, plot, console)
    if errors:
        raise typer.Exit(2)


def _write_outputs(
    results: list[Any], report: dict[str, Any], out: Path | None, detector: str, plot: Path | None, console: Console
) -> None:
    """NAB result CSVs and scores under ``out/detector`` and one plot per file under ``plot`` (each when given)."""
    from pipeline.backtest.output import write_nab_csv, write_scores

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


def _cross_validate(
    files: list[Path],
    windows: dict[str, Any],
    cfg: ReplayConfig,
    seeds: list[int],
    cands: list[Candidate],
    workers: int,
    out: Path | None,
    console: Console,
    rule: str,
) -> None:
    """``--cv``: replay per seed, cross-validate the candidates by group, print and save the figures."""
    from rich.console import Console

    from pipeline.backtest.cv_run import cv_summary, render_cv, run_cv

    rep = run_cv(files, windows, cfg, seeds, cands, workers=workers, rule=rule)
    for err in rep.errors:
        console.print(f"[red]failed[/red] {err}")
    render_cv(rep, Console(width=max(console.width, 200)))  # one row per candidate, one column per group
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        path = out / "crossval.json"
        path.write_text(json.dumps(cv_summary(rep), indent=2))
        console.print(f"cross-validation figures: {path}")
    if not rep.nested:
        raise typer.Exit(1)
    if rep.errors:
        raise typer.Exit(2)
