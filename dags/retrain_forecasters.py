"""Retrain the tsad forecasters from the stream archive and promote better ones.

For each data interval (default daily, ``TSAD_RETRAIN_SCHEDULE``; no catch-up):

1. ``plan``: the training range is the interval extended back to ``TSAD_RETRAIN_LOOKBACK_HOURS``
   (default 168) before its end, read from the Parquet archive written by ``tsad archive``
   (``TSAD_ARCHIVE_DIR``); its most recent ``TSAD_RETRAIN_HOLDOUT_FRACTION`` is held out. The run
   is **skipped** with the reason in the log when the archive holds too little data.
2. ``train``: dynamically mapped over model groups (the routing file in ``TSAD_ROUTING``, the one
   ``tsad serve --routing`` reads: each group trains on the series routed to it; without it
   ``TSAD_RETRAIN_GROUPS``, JSON ``{"group": "series glob"}``, default ``{"default": "*"}``) x kinds
   (``many-to-one`` and ``many-to-many``): fits a candidate on CUDA when present, else CPU (``device="auto"``),
   evaluates it and the current champion on the held-out slice (normalised MAE; detection F1 when
   ``TSAD_RETRAIN_LABELS`` points at NAB-style label windows) and registers it, unpromoted, in the
   model registry (``TSAD_REGISTRY_DIR``) as ``<group>-<kind>`` with the figures in meta.json.
   A group with no eligible series is **skipped** (``AirflowSkipException``), not failed.
3. ``promote__<model>`` (trigger rule ``none_failed_min_one_success``; skipped when its model's
   training was skipped, so one group without data blocks no other): promotes the candidate atomically (registry champion pointer) only when
   it beats the champion, or there is none. Running ``tsad serve`` processes hot-reload it.
4. ``publish__<model>``: emits the Asset ``tsad://registry/<model>`` when (and only when) that
   model got a new champion, so other DAGs can be scheduled on it.
5. ``record`` (``none_failed_min_one_success``, so skipped promotions do not stop it): last-success timestamp and candidate/champion errors as ``RetrainMetrics``:
   pushed to the Pushgateway at ``TSAD_PUSHGATEWAY_URL`` when set, otherwise written to the
   node-exporter textfile ``TSAD_RETRAIN_TEXTFILE`` (default ``var/metrics/tsad_retrain.prom``).

Idempotent per interval: a re-run finds the versions registered under
``idempotency_key = "<kind>:<interval start>:<interval end>"`` and neither trains nor writes a
model file again. Hyperparameters (epochs, hidden, window, ...) come from ``TSAD_RETRAIN_*`` and
can be overridden per run through the DAG params. The logic lives in ``pipeline/retrain/`` (the
task bodies in ``pipeline/retrain/tasks.py``, settings in ``models/core/settings.py``
``settings.retrain``); this file only wires tasks (heavy imports happen inside them, so parsing
stays fast).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Asset, Param, dag, task

from models.core.settings import Settings, load_settings
from pipeline.retrain.contracts import plan_jobs

# Read when the file is parsed: the jobs (group x kind; the routing file in TSAD_ROUTING, the one tsad
# serve reads, or TSAD_RETRAIN_GROUPS) and the schedule. Light imports only (no torch, pandas).
SETTINGS = load_settings()
JOBS = [job.to_dict() for job in plan_jobs(SETTINGS)]
MODEL_NAMES = [job["name"] for job in JOBS]


def model_asset(name: str) -> Asset:
    """The Asset updated when ``name`` gets a new champion (schedule other DAGs on it)."""
    return Asset(f"tsad://registry/{name}")


def train_or_skip(settings: Settings, the_plan: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    """``train_task``, with a group that has no eligible series turned into a skip (not a failure),
    so the other groups still get promoted and ``record`` still runs."""
    from airflow.sdk.exceptions import AirflowSkipException

    from pipeline.retrain.contracts import NotEnoughDataError
    from pipeline.retrain.tasks import train_task

    try:
        return train_task(settings, the_plan, job)
    except NotEnoughDataError as error:
        raise AirflowSkipException(f"{job['name']}: not training: {error}") from error


def candidate_for(candidates: list[dict[str, Any]] | None, name: str) -> dict[str, Any]:
    """This model's candidate among the mapped ``train`` results; skip when its training was skipped."""
    from airflow.sdk.exceptions import AirflowSkipException

    from pipeline.retrain import tasks

    try:
        return tasks.candidate_for(candidates, name)
    except tasks.NoCandidateError as error:
        raise AirflowSkipException(str(error)) from error


def _settings(context: dict[str, Any]) -> Settings:
    from pipeline.retrain.tasks import run_settings

    return run_settings(context["params"])


def _promote_and_publish(name: str, candidates: Any, the_plan: Any) -> Any:
    """The ``promote__<name>`` and ``publish__<name>`` tasks of one model; returns the decision (XComArg)."""

    # none_failed_min_one_success: runs when some group trained (others may have been skipped),
    # is skipped with everything else when ``plan`` skipped the run.
    @task(task_id=f"promote__{name}", trigger_rule="none_failed_min_one_success")
    def promote(candidates: list[dict[str, Any]], the_plan: dict[str, Any], **context: Any) -> dict[str, Any]:
        """Promote this model's candidate when it beats the champion (atomic registry pointer);
        skipped when this model's training was skipped."""
        from pipeline.retrain.tasks import promote_task

        return promote_task(_settings(context), the_plan, candidate_for(candidates, name))

    @task(task_id=f"publish__{name}", outlets=[model_asset(name)])
    def publish(decision: dict[str, Any]) -> str:
        """Emit the model's Asset only when it has a new champion (skipped otherwise)."""
        from airflow.sdk.exceptions import AirflowSkipException

        if not decision["promoted"]:
            raise AirflowSkipException(f"{decision['name']}: no new champion ({decision['reason']})")
        return f"{decision['name']} v{decision['candidate']}"

    decision: Any = promote(candidates, the_plan)  # an XComArg: the dict once the task ran
    publish(decision)
    return decision


@dag(
    dag_id="retrain_forecasters",
    schedule=SETTINGS.retrain.schedule,
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["tsad", "ml", "retraining"],
    doc_md=__doc__,
    default_args={
        "owner": "tsad",
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=30),
        "execution_timeout": timedelta(hours=4),
    },
    params={
        "epochs": Param(None, type=["null", "integer"], minimum=1, description="Training epochs."),
        "hidden": Param(None, type=["null", "integer"], minimum=1, description="LSTM hidden size."),
        "window": Param(None, type=["null", "integer"], minimum=2, description="Input window (time steps)."),
        "lookback_hours": Param(None, type=["null", "number"], description="Training range before interval end."),
        "min_points": Param(None, type=["null", "integer"], description="Values per series needed to train."),
        "device": Param(None, type=["null", "string"], description="auto | cpu | cuda."),
    },
)
def retrain_forecasters() -> None:
    @task
    def plan(**context: Any) -> dict[str, Any]:
        """Training range and held-out cut for this data interval; skips when there is too little data."""
        from airflow.sdk.exceptions import AirflowSkipException

        from pipeline.retrain.contracts import NotEnoughDataError
        from pipeline.retrain.tasks import plan_task

        try:
            return plan_task(_settings(context), context["data_interval_start"], context["data_interval_end"])
        except NotEnoughDataError as error:
            raise AirflowSkipException(f"not retraining: {error}") from error

    @task(map_index_template="{{ task.op_kwargs['job']['name'] }}")
    def train(job: dict[str, Any], the_plan: dict[str, Any], **context: Any) -> dict[str, Any]:
        """Fit one (group, kind) candidate, evaluate it and the champion, register it unpromoted.
        Skipped (not failed) when the group has no eligible series."""
        return train_or_skip(_settings(context), the_plan, job)

    the_plan = plan()
    candidates = train.partial(the_plan=the_plan).expand(job=JOBS)

    decisions = [_promote_and_publish(name, candidates, the_plan) for name in MODEL_NAMES]

    @task(trigger_rule="none_failed_min_one_success")
    def record(decisions: list[dict[str, Any]], **context: Any) -> str:
        """Last success + candidate/champion errors to the Pushgateway or the textfile collector
        (models whose promote task was skipped have no decision and are left out)."""
        from pipeline.retrain.tasks import record_task

        return record_task(_settings(context), decisions)

    record(decisions)


retrain_forecasters()
