"""A throw-away Airflow 3 environment for the DAG tests, always in a subprocess.

Airflow reads ``AIRFLOW_HOME`` and its config when first imported, so the test process never
imports it: ``airflow_env(home)`` builds the environment (temporary ``AIRFLOW_HOME``, SQLite
database, ``dags/`` of this repo, no examples), ``migrate(env)`` runs ``airflow db migrate``, and
``run_dag(env, dag_id, logical_date, conf)`` runs this file as a script, which loads the DAG with
``DagBag`` and calls ``dag.test()`` in a fresh interpreter, then prints one ``RESULT {json}`` line:
run state, every task instance's state, and the asset events the run emitted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DAGS = REPO / "dags"
VENV_BIN = Path(sys.executable).parent


def airflow_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "PYTHONPATH": str(REPO),
        }
    )
    env.update(extra or {})
    return env


def migrate(env: dict[str, str]) -> float:
    """``airflow db migrate``; returns the seconds it took."""
    start = time.perf_counter()
    done = subprocess.run(
        [str(VENV_BIN / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{done.stdout}\n{done.stderr}")
    return time.perf_counter() - start


def run_dag(
    env: dict[str, str], dag_id: str, logical_date: str, conf: dict | None = None, timeout: float = 300
) -> dict:
    """Run ``dag.test()`` for ``logical_date`` in a subprocess; returns the RESULT dict (+ ``log``)."""
    done = subprocess.run(
        [sys.executable, __file__, dag_id, logical_date, json.dumps(conf or {})],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    log = done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"dag.test of {dag_id} failed (rc {done.returncode}):\n{log[-20000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    result["log"] = log
    return result


def _main(dag_id: str, logical_date: str, conf: str) -> None:
    from datetime import datetime

    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    bag = DagBag(dag_folder=str(DAGS))
    if bag.import_errors:
        raise SystemExit(f"import errors: {bag.import_errors}")
    dag = bag.dags[dag_id]
    run = dag.test(logical_date=datetime.fromisoformat(logical_date), run_conf=json.loads(conf))
    with create_session() as session:
        tis = {
            f"{ti.task_id}[{ti.map_index}]" if ti.map_index >= 0 else ti.task_id: str(ti.state)
            for ti in run.get_task_instances(session=session)
        }
        events = [e.asset.uri for e in session.query(AssetEvent).filter(AssetEvent.source_run_id == run.run_id)]
    print(
        "RESULT "
        + json.dumps(
            {
                "state": str(run.state),
                "run_id": run.run_id,
                "tasks": tis,
                "asset_events": sorted(events),
                "data_interval": [str(run.data_interval_start), str(run.data_interval_end)],
            }
        )
    )


if __name__ == "__main__":
    _main(*sys.argv[1:4])
