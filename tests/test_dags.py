"""The DAG folder parses cleanly (DagBag, fresh interpreter, temporary AIRFLOW_HOME) and quickly.

Parse time is measured in a fresh interpreter: ``import airflow.sdk`` first (reported, not
asserted), then the DAG file alone, which must take under 2 s (excluding the airflow import).
"""

from __future__ import annotations

import json
import subprocess
import sys

from airflow_env import DAGS, REPO, airflow_env

_INSPECT = r"""
import json, time
t0 = time.perf_counter()
import airflow.sdk  # noqa: F401
from airflow.sdk import Asset, dag, task  # noqa: F401  (resolve the lazy names too)
t1 = time.perf_counter()
import importlib.util
spec = importlib.util.spec_from_file_location("retrain_dag_probe", DAG_FILE)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
t2 = time.perf_counter()
import sys
heavy = sorted(m for m in ("torch", "pandas", "models.training", "models.retraining", "pyarrow") if m in sys.modules)

from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=DAGS)
dag = bag.dags.get("retrain_forecasters")
out = {"airflow_import_s": t1 - t0, "dag_file_s": t2 - t1, "heavy_imports": heavy,
       "import_errors": {k: str(v) for k, v in bag.import_errors.items()}, "dag_ids": sorted(bag.dags)}
if dag is not None:
    out.update(
        tasks=sorted(t.task_id for t in dag.tasks), catchup=dag.catchup, tags=sorted(dag.tags),
        schedule=str(getattr(dag.timetable, "_expression", None) or dag.timetable), doc=bool(dag.doc_md),
        retries={t.task_id: [t.retries, float(t.retry_exponential_backoff)] for t in dag.tasks},
        outlets={t.task_id: [a.uri for a in t.outlets] for t in dag.tasks if t.outlets},
        mapped=sorted(t.task_id for t in dag.tasks if getattr(t, "is_mapped", False) or type(t).__name__ == "MappedOperator"),
        params=sorted(dag.params.keys()),
    )
print("RESULT " + json.dumps(out))
"""


def _inspect(tmp_path, extra=None) -> dict:
    env = airflow_env(tmp_path / "airflow", extra)
    code = f"DAG_FILE = {str(DAGS / 'retrain_forecasters.py')!r}\nDAGS = {str(DAGS)!r}\n" + _INSPECT
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout + done.stderr
    return json.loads(lines[-1][7:])


def test_dag_folder_imports_without_errors_and_parses_fast(tmp_path):
    out = _inspect(tmp_path)
    print(f"import airflow.sdk: {out['airflow_import_s']:.2f}s; dag file (excl. airflow import): {out['dag_file_s']:.3f}s")
    assert out["import_errors"] == {}
    assert out["dag_ids"] == ["retrain_forecasters"]
    assert out["dag_file_s"] < 2.0
    assert out["heavy_imports"] == []  # torch, pandas, models.* load inside the tasks only


def test_retrain_dag_shape(tmp_path):
    out = _inspect(tmp_path)
    m2o, m2m = "default-many-to-one", "default-many-to-many"
    assert out["tasks"] == sorted(["plan", "train", "record", f"promote__{m2o}", f"promote__{m2m}",
                                   f"publish__{m2o}", f"publish__{m2m}"])
    assert out["mapped"] == ["train"]
    assert out["catchup"] is False and "tsad" in out["tags"] and out["doc"]
    assert "expression='0 0 * * *'" in out["schedule"]  # @daily
    assert all(retries == [2, 2.0] for retries in out["retries"].values())
    assert out["outlets"] == {f"publish__{m2o}": [f"tsad://registry/{m2o}"],
                              f"publish__{m2m}": [f"tsad://registry/{m2m}"]}
    assert {"epochs", "hidden", "window"} <= set(out["params"])


def test_schedule_groups_and_kinds_come_from_the_environment(tmp_path):
    out = _inspect(tmp_path, {"TSAD_RETRAIN_SCHEDULE": "0 */6 * * *", "TSAD_RETRAIN_KINDS": '["many-to-one"]',
                              "TSAD_RETRAIN_GROUPS": '{"cpu": "ec2_*", "web": "speed_*"}'})
    assert out["import_errors"] == {}
    assert "expression='0 */6 * * *'" in out["schedule"]
    assert [t for t in out["tasks"] if t.startswith("promote__")] == ["promote__cpu-many-to-one",
                                                                      "promote__web-many-to-one"]
