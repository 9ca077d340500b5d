"""CLI for the models area: ``tsad train`` and ``tsad models list|promote|rollback``.

``--registry`` defaults to the ``registry_dir`` setting (``TSAD_REGISTRY_DIR``, see ``models.core.settings``).

Wired into the main app by ``pipeline/cli/__init__.py`` through ``register(app)``. torch, pandas and the
training code are imported inside the commands so ``tsad --help`` stays fast.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from models.registry import ModelRegistry

models_app = typer.Typer(help="Inspect and manage registered models.", no_args_is_help=True)


def _check_name(name: str | None) -> None:
    """Refuse an unsafe model name with one line and exit code 2, before any work."""
    from models.registry import InvalidModelNameError, validate_name

    if name is None:
        return
    try:
        validate_name(name)
    except InvalidModelNameError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _registry(path: Path | None) -> ModelRegistry:
    """``ModelRegistry`` at ``--registry``, else at the ``registry_dir`` setting (``TSAD_REGISTRY_DIR``)."""
    from models.registry import ModelRegistry

    if path is None:
        from models.core.settings import load_settings

        path = Path(load_settings().registry_dir)
    return ModelRegistry(path)


class Kind(StrEnum):
    """``--kind`` choices: the forecaster kinds of ``models.core.kinds.KINDS``."""

    many_to_one = "many-to-one"
    many_to_many = "many-to-many"


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


# Long only in its signature (one typer option per flag).
def train(
    data: Path = typer.Argument(..., exists=True, help="NAB CSV, directory of CSVs, or Parquet (series, ts, value)."),
    kind: Kind = typer.Option(Kind.many_to_one, "--kind", help="Forecaster kind."),
    registry: Path = typer.Option(
        None, "--registry", help="Model registry root (default: TSAD_REGISTRY_DIR / settings.registry_dir)."
    ),
    name: str = typer.Option("default", "--name", help="Model name in the registry."),
    window: int = typer.Option(64, "--window", min=2),
    horizon: int = typer.Option(1, "--horizon", min=1),
    hidden: int = typer.Option(64, "--hidden", min=1),
    layers: int = typer.Option(1, "--layers", min=1),
    epochs: int = typer.Option(30, "--epochs", min=1),
    device: Device = typer.Option(Device.auto, "--device"),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(None, "--threads", min=1, help="CPU threads (default min(2, cores))."),
    warm_start: bool = typer.Option(False, "--warm-start/--cold-start", help="Start from the current champion."),
    idempotency_key: str = typer.Option(
        None, "--idempotency-key", help="Re-running with the same key registers nothing new."
    ),
    promote: bool = typer.Option(True, "--promote/--no-promote", help="Make the new version the champion."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train a forecaster on DATA and register it as a new version."""
    _check_name(name)
    from rich.console import Console

    from models.forecasting.data import load_training_data
    from models.forecasting.forecasters import ForecasterConfig
    from models.forecasting.training import fit

    console = Console()
    reg = _registry(registry)
    data_set = load_training_data(data)
    config = ForecasterConfig(kind=kind.value, window=window, horizon=horizon, hidden=hidden, layers=layers)
    start = reg.load(name) if warm_start and reg.champion(name) is not None else None
    bundle, report = fit(
        config,
        data_set.series,
        epochs=epochs,
        device=device.value,
        seed=seed,
        warm_start=start,
        progress=progress,
        name=name,
        num_threads=threads,
    )
    version = reg.register(bundle, idempotency_key=idempotency_key, data_range=data_set.data_range)
    if promote:
        reg.promote(name, version)
    console.print(
        f"[bold]{name} v{version}[/bold] {config.kind} on {report.n_series} series: {report.epochs} epochs "
        f"(best {report.best_epoch}), val MSE {report.best_val_loss:.4f}, {report.windows_per_s:,.0f} windows/s, "
        f"{report.wall_time_s:.1f}s on {report.device}" + (" [green]promoted[/green]" if promote else "")
    )
    cal = bundle.calibration
    if cal is not None and cal.threshold is not None:
        console.print(
            f"calibration: abs error mean {cal.error_mean:.4f} std {cal.error_std:.4f} threshold {cal.threshold:.4f}"
        )


@models_app.command("list")
def list_models(
    registry: Path = typer.Option(
        None, "--registry", help="Model registry root (default: TSAD_REGISTRY_DIR / settings.registry_dir)."
    ),
    name: str = typer.Argument(None, help="Model name; all models when omitted."),
) -> None:
    """List registered versions (champion marked with *)."""
    _check_name(name)
    from rich.console import Console
    from rich.table import Table

    from models.registry import RegistryError

    reg = _registry(registry)
    table = Table("name", "version", "champion", "kind", "created_at", "val_mse", "ok")
    for n in [name] if name else reg.names():
        try:
            rows = reg.list(n)
        except RegistryError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        for row in rows:
            val = row.metrics.get("val_mse")
            table.add_row(
                n,
                str(row.version),
                "*" if row.is_champion else "",
                row.kind or "?",
                row.created_at or "?",
                f"{val:.4f}" if isinstance(val, (int, float)) else "",
                "yes" if row.ok else "[red]NO[/red]",
            )
    Console().print(table)


@models_app.command("promote")
def promote_model(
    name: str = typer.Argument(...),
    version: int = typer.Argument(...),
    registry: Path = typer.Option(
        None, "--registry", help="Model registry root (default: TSAD_REGISTRY_DIR / settings.registry_dir)."
    ),
) -> None:
    """Make VERSION the champion of NAME (refused for a corrupt version)."""
    _check_name(name)
    from models.registry import RegistryError

    try:
        _registry(registry).promote(name, version)
    except RegistryError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"{name}: champion is now v{version}")


@models_app.command("rollback")
def rollback_model(
    name: str = typer.Argument(...),
    registry: Path = typer.Option(
        None, "--registry", help="Model registry root (default: TSAD_REGISTRY_DIR / settings.registry_dir)."
    ),
) -> None:
    """Restore the previous champion of NAME."""
    _check_name(name)
    from models.registry import RegistryError

    try:
        version = _registry(registry).rollback(name)
    except RegistryError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"{name}: rolled back to v{version}")


def register(app: typer.Typer) -> None:
    """Add ``train`` and the ``models`` group to the main ``tsad`` app."""
    app.command("train")(train)
    app.add_typer(models_app, name="models")
