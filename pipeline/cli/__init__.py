"""The ``tsad`` command line (typer).

Each area registers its own commands from a small module with ``register(app)``; this file only
assembles them. Heavy imports (torch, pandas, kafka) happen inside the commands, so ``tsad
--help`` is quick.
"""

from __future__ import annotations

import typer

from pipeline.cli import anomalies, archive, backtest, commands, models, serve

app = typer.Typer(
    name="tsad",
    help="Streaming time-series anomaly detection: Kafka in, LSTM forecasts, anomalies out.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# Each module adds its commands with `register(app: typer.Typer) -> None`, in --help order:
# broker, publish | train, models list|promote|rollback | serve, demo | archive | backtest | anomalies.
for _module in (commands, models, serve, archive, backtest, anomalies):
    _module.register(app)


if __name__ == "__main__":
    app()
