"""The DAG folder parses cleanly (DagBag, fresh interpreter, temporary AIRFLOW_HOME) and quickly.

Parsing happens in a fresh interpreter: ``import airflow.sdk`` first, then the DAG file alone, which
must not import the heavy modules (torch, pandas, the training code). The times of both are
printed, not asserted (timings belong in benchmarks).
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
heavy = sorted(m for m in ("torch", "pandas", "models.forecasting.training", "pipeline.retrain.train", "pipeline.retrain.plan", "pipeline.retrain.tasks", "pyarrow") if m in sys.modules)

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
        trigger_rules={t.task_id: str(getattr(t.trigger_rule, "value", t.trigger_rule)) for t in dag.tasks},
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


def test_dag_folder_imports_without_errors_and_without_heavy_imports(tmp_path):
    out = _inspect(tmp_path)
    print(
        f"import airflow.sdk: {out['airflow_import_s']:.2f}s; dag file (excl. airflow import): {out['dag_file_s']:.3f}s"
    )
    assert out["import_errors"] == {}
    assert out["dag_ids"] == ["retrain_forecasters"]
    assert out["heavy_imports"] == []  # torch, pandas, models.* load inside the tasks only


def test_retrain_dag_shape(tmp_path):
    out = _inspect(tmp_path)
    m2o, m2m = "default-many-to-one", "default-many-to-many"
    assert out["tasks"] == sorted(
        ["plan", "train", "record", f"promote__{m2o}", f"promote__{m2m}", f"publish__{m2o}", f"publish__{m2m}"]
    )
    assert out["mapped"] == ["train"]
    assert out["catchup"] is False and "tsad" in out["tags"] and out["doc"]
    assert "expression='0 0 * * *'" in out["schedule"]  # @daily
    assert all(retries == [2, 2.0] for retries in out["retries"].values())
    assert out["outlets"] == {
        f"publish__{m2o}": [f"tsad://registry/{m2o}"],
        f"publish__{m2m}": [f"tsad://registry/{m2m}"],
    }
    assert {"epochs", "hidden", "window"} <= set(out["params"])
    # one group without data (train skipped) must not block the others' promotion nor record
    rules = out["trigger_rules"]
    assert {t: r for t, r in rules.items() if t.startswith("promote__") or t == "record"} == {
        f"promote__{m2o}": "none_failed_min_one_success",
        f"promote__{m2m}": "none_failed_min_one_success",
        "record": "none_failed_min_one_success",
    }
    assert rules["train"] == "all_success" and rules[f"publish__{m2o}"] == "all_success"


_SKIP_PROBE = r"""
import importlib.util, json
spec = importlib.util.spec_from_file_location("retrain_dag_probe", DAG_FILE)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
from airflow.sdk.exceptions import AirflowSkipException
from models.core.settings import load_settings
out = {}
settings = load_settings(archive_dir=ARCHIVE, registry_dir=REGISTRY)
plan = {"interval_start": "2024-01-01T00:00:00+00:00", "interval_end": "2024-01-02T00:00:00+00:00",
        "start": "2023-12-25T00:00:00+00:00", "end": "2024-01-02T00:00:00+00:00", "cut": 1704067200.0,
        "cut_iso": "2024-01-01T00:00:00+00:00", "series": ["ec2_a"], "counts": {}}
job = {"group": "web", "pattern": ["speed_*"], "kind": "many-to-one", "name": "web-many-to-one"}
try:
    module.train_or_skip(settings, plan, job)
    out["train"] = "returned"
except AirflowSkipException as error:
    out["train"] = "skipped: " + str(error)
cands = [{"name": "cpu-many-to-one", "version": 3}]
out["found"] = module.candidate_for(cands, "cpu-many-to-one")["version"]
try:
    module.candidate_for(cands, "web-many-to-one")
    out["missing"] = "returned"
except AirflowSkipException:
    out["missing"] = "skipped"
print("RESULT " + json.dumps(out))
"""


def test_a_group_without_data_skips_its_training_and_promotion_instead_of_failing(tmp_path):
    env = airflow_env(tmp_path / "airflow")
    code = (
        f"DAG_FILE = {str(DAGS / 'retrain_forecasters.py')!r}\nARCHIVE = {str(tmp_path / 'archive')!r}\n"
        f"REGISTRY = {str(tmp_path / 'registry')!r}\n" + _SKIP_PROBE
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout + done.stderr
    out = json.loads(lines[-1][7:])
    assert out["train"].startswith("skipped: web-many-to-one: not training"), out
    assert out["found"] == 3 and out["missing"] == "skipped"


def test_schedule_groups_and_kinds_come_from_the_environment(tmp_path):
    out = _inspect(
        tmp_path,
        {
            "TSAD_RETRAIN_SCHEDULE": "0 */6 * * *",
            "TSAD_RETRAIN_KINDS": '["many-to-one"]',
            "TSAD_RETRAIN_GROUPS": '{"cpu": "ec2_*", "web": "speed_*"}',
        },
    )
    assert out["import_errors"] == {}
    assert "expression='0 */6 * * *'" in out["schedule"]
    assert [t for t in out["tasks"] if t.startswith("promote__")] == [
        "promote__cpu-many-to-one",
        "promote__web-many-to-one",
    ]


def test_groups_come_from_the_routing_file_tsad_serve_reads(tmp_path):
    routing = tmp_path / "routing.yaml"
    routing.write_text(
        "routes:\n  - {group: cpu, match: ['ec2_*']}\n  - {group: web, match: 'speed_*'}\ndefault: rest\n"
    )
    out = _inspect(
        tmp_path,
        {
            "TSAD_ROUTING": str(routing),
            "TSAD_RETRAIN_KINDS": '["many-to-many"]',
            "TSAD_RETRAIN_GROUPS": '{"ignored": "*"}',
        },
    )
    assert out["import_errors"] == {}
    assert [t for t in out["tasks"] if t.startswith("promote__")] == [
        "promote__cpu-many-to-many",
        "promote__rest-many-to-many",
        "promote__web-many-to-many",
    ]
