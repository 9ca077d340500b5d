"""The ``tsad`` command line (typer).

Each area registers its own commands from a small module with ``register(app)``; this file only
assembles them. Heavy imports (torch, pandas, kafka) happen inside the commands, so ``tsad
--help`` is quick.
"""

from __future__ import annotations

import importlib
import importlib.util

import typer

app = typer.Typer(
    name="tsad",
    help="Streaming time-series anomaly detection: Kafka in, LSTM forecasts, anomalies out.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# Modules that add commands: each defines `register(app: typer.Typer) -> None`.
COMMAND_MODULES = (
    "pipeline.cli.commands",  # broker, publish
    "pipeline.cli.models",  # train, models list|promote|rollback
    "pipeline.cli.serve",  # serve, demo
    "pipeline.cli.archive",  # archive
    "pipeline.cli.backtest",  # backtest
    "pipeline.cli.anomalies",  # anomalies (tail the anomalies topic)
)

for _name in COMMAND_MODULES:
    if importlib.util.find_spec(_name) is not None:  # areas still under construction are absent
        importlib.import_module(_name).register(app)


if __name__ == "__main__":
    app()
