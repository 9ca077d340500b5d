"""The Grafana dashboard and the Prometheus rules refer only to metrics tsad exports.

No Grafana runs here, so the dashboard is checked statically: valid JSON with ``uid``, ``title``,
``panels``, ``schemaVersion``; unique uid, panel ids and titles; every panel on the provisioned
data source. Every metric name in a panel query or a rule expression must be a sample name of a
fresh ``ScorerMetrics``/``ArchiverMetrics``/``RetrainMetrics`` registry (counters as ``_total``,
histograms as ``_bucket/_sum/_count``, info as ``_info``), a recording-rule output, or one of
the few series Prometheus itself makes (``up``, ``ALERTS``). The live test
(``test_deploy_live.py``) repeats the check against a running scorer's ``/metrics``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from pipeline.metrics import ArchiverMetrics, RetrainMetrics, ScorerMetrics
from pipeline.serve.alertmanager import AlertmanagerSink
from pipeline.serve.anomaly_export import AnomalousSeries

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARD_DIR = DEPLOY / "grafana" / "dashboards"
RULE_FILES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDER = DEPLOY / "grafana" / "provisioning" / "dashboards" / "tsad.yml"

# Series Prometheus makes itself (scrape health and alert state).
PROMETHEUS_SERIES = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})

_PROMQL_KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "offset",
        "bool",
        "inf",
        "nan",
        "atan2",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
    }
)


# ---------------------------------------------------------------- helpers (also used by the live test)


def sample_names(registry: CollectorRegistry) -> set[str]:
    """Every sample name ``registry``'s metrics can export, whether or not a child exists yet."""
    return family_sample_names(registry.collect())


def family_sample_names(families) -> set[str]:
    """Sample names of metric families (from a registry or parsed from a /metrics page)."""
    names: set[str] = set()
    for family in families:
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count", f"{family.name}_created"}
        elif family.type == "info":
            names.add(f"{family.name}_info")
        else:
            names.add(family.name)
        names |= {sample.name for sample in family.samples}
    return names


def exported_metric_names() -> set[str]:
    """Sample names of the scorer, the archiver and the retraining figures (fresh registries)."""
    names: set[str] = set()
    for metrics_class in (ScorerMetrics, ArchiverMetrics, RetrainMetrics):
        names |= sample_names(metrics_class(registry=CollectorRegistry()).registry)
    scorer_extras = CollectorRegistry()  # what tsad serve registers beside ScorerMetrics
    scorer_extras.register(AnomalousSeries())
    AlertmanagerSink("http://127.0.0.1:9", scorer_extras)
    return names | sample_names(scorer_extras)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (functions, keywords, labels and durations removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges, subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", text)
    text = re.sub(r"\boffset\s+-?[0-9a-z]+", "", text)  # offset 1h
    names = set()
    for match in re.finditer(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _PROMQL_KEYWORDS or re.fullmatch(r"[0-9a-fx.e]+", name.lower()):
            continue
        names.add(name)
    return names


def load_rules() -> list[dict]:
    rules = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules.extend(group["rules"])
    return rules


def recorded_names() -> set[str]:
    return {rule["record"] for rule in load_rules() if "record" in rule}


def dashboard_panels(dashboard: dict) -> list[dict]:
    """All panels, including those nested inside collapsed rows."""
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def dashboard_exprs(dashboard: dict) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"]) for panel in dashboard_panels(dashboard) for target in panel.get("targets", [])
    ]


def load_dashboards() -> list[tuple[Path, dict]]:
    return [(path, json.loads(path.read_text())) for path in sorted(DASHBOARD_DIR.glob("*.json"))]


# ---------------------------------------------------------------- the helpers themselves


def test_promql_name_extraction_finds_metrics_and_skips_the_rest():
    expr = (
        "histogram_quantile(0.99, sum by (job, le) (rate(tsad_end_to_end_latency_seconds_bucket"
        '{job="tsad-scorer", le!="+Inf"}[$__rate_interval] offset 1h))) > 2.5e0 '
        'and on (job) job:tsad_events_scored:rate5m > bool 0 or absent(up{job="x"}) '
        "unless time() - max(some_metric) > 2 * 86400"
    )
    assert promql_metric_names(expr) == {
        "tsad_end_to_end_latency_seconds_bucket",
        "job:tsad_events_scored:rate5m",
        "up",
        "some_metric",
    }


def test_exported_names_cover_labelled_and_typed_metrics():
    names = exported_metric_names()
    # Labelled metrics have no sample until a child exists: their names must still be known.
    for expected in (
        "tsad_events_rejected_total",
        "tsad_consumer_lag_messages",
        "tsad_end_to_end_latency_seconds_bucket",
        "tsad_end_to_end_latency_seconds_count",
        "tsad_model_info",
        "tsad_retrain_last_success_timestamp_seconds",
        "tsad_retrain_promotions_total",
        "tsad_archive_events_total",
    ):
        assert expected in names
    assert "tsad_events_rejected" not in names  # the counter's family name is not a sample


# ---------------------------------------------------------------- dashboards


@pytest.fixture(scope="module")
def dashboards():
    found = load_dashboards()
    assert found, f"no dashboard JSON under {DASHBOARD_DIR}"
    return found


def test_dashboards_have_required_fields_and_unique_uids(dashboards):
    uids, titles = [], []
    for path, dashboard in dashboards:
        for field in ("uid", "title", "panels", "schemaVersion"):
            assert field in dashboard, f"{path.name} lacks {field}"
        assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
        assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", dashboard["uid"]), dashboard["uid"]
        uids.append(dashboard["uid"])
        titles.append(dashboard["title"])
    assert len(set(uids)) == len(uids), uids
    assert len(set(titles)) == len(titles), titles


def test_panels_have_unique_ids_and_titles_and_use_the_provisioned_datasource(dashboards):
    datasource_uids = {ds["uid"] for ds in yaml.safe_load(DATASOURCES.read_text())["datasources"]}
    for path, dashboard in dashboards:
        panels = dashboard_panels(dashboard)
        ids = [panel["id"] for panel in panels]
        titles = [panel["title"] for panel in panels]
        assert len(set(ids)) == len(ids), f"{path.name}: duplicate panel ids"
        assert len(set(titles)) == len(titles), f"{path.name}: duplicate panel titles"
        for panel in panels:
            if panel["type"] == "row":
                continue
            assert panel.get("targets"), f"{path.name}: panel {panel['title']!r} has no query"
            assert panel["datasource"]["uid"] in datasource_uids, panel["title"]
            ref_ids = [target["refId"] for target in panel["targets"]]
            assert len(set(ref_ids)) == len(ref_ids), panel["title"]


def test_dashboard_covers_what_the_issue_asks_for(dashboards):
    exprs = " ".join(expr for _, dashboard in dashboards for _, expr in dashboard_exprs(dashboard))
    for needed in (
        "tsad_events_consumed",
        "tsad_anomalies",
        "tsad_events_rejected",
        "tsad_consumer_lag_messages",
        "p50",
        "p99",
        "tsad_tracked_series",
        "tsad_model_version",
        "tsad_model_last_reload_timestamp_seconds",
        "tsad_retrain_last_success",
    ):
        assert needed in exprs, f"no panel shows {needed}"


def series_panels(dashboard: dict) -> dict[str, dict]:
    return {panel["title"]: panel for panel in dashboard_panels(dashboard)}


def test_dashboard_shows_the_anomalous_series_with_their_band(dashboards):
    dashboard = next(d for path, d in dashboards if d["uid"] == "tsad-overview")
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "series")
    assert variable["query"]["query"] == "label_values(tsad_series_anomaly_score, series)"
    panels = series_panels(dashboard)
    table = panels["Anomalous series now"]
    assert table["type"] == "table"
    columns = table["transformations"][1]["options"]["renameByName"]
    assert set(columns.values()) == {"score", "since"}  # + the series and model labels
    assert all("by (series, model)" in target["expr"] for target in table["targets"])
    band = panels["Series value and expected band"]
    legends = {target["legendFormat"] for target in band["targets"]}
    assert legends == {"value", "expected", "lower", "upper", "anomaly"}
    assert all('series="$series"' in target["expr"] for target in band["targets"])
    assert "tsad_model_anomalies_total" in panels["Anomalies per second by model"]["targets"][0]["expr"]


def test_every_dashboard_query_uses_only_exported_or_recorded_metrics(dashboards):
    known = exported_metric_names() | recorded_names() | PROMETHEUS_SERIES
    unknown = {
        (path.name, title, name)
        for path, dashboard in dashboards
        for title, expr in dashboard_exprs(dashboard)
        for name in promql_metric_names(expr) - known
    }
    assert not unknown, f"dashboard queries name metrics nobody exports: {sorted(unknown)}"


def test_dashboard_provider_points_at_the_mounted_directory():
    provider = yaml.safe_load(PROVIDER.read_text())["providers"][0]
    assert provider["type"] == "file"
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    grafana_volumes = compose["services"]["grafana"]["volumes"]
    assert any(volume.endswith(f":{provider['options']['path']}:ro") for volume in grafana_volumes), grafana_volumes


# ---------------------------------------------------------------- rules


def test_every_rule_expression_uses_only_exported_or_recorded_metrics():
    known = exported_metric_names() | recorded_names() | PROMETHEUS_SERIES
    unknown = {
        (rule.get("record") or rule.get("alert"), name)
        for rule in load_rules()
        for name in promql_metric_names(rule["expr"]) - known
    }
    assert not unknown, f"rules name metrics nobody exports: {sorted(unknown)}"


def test_recording_rules_are_used_and_inputs_exist():
    """Each recording rule is read by an alert, another rule or a panel (no dead rules)."""
    rules = load_rules()
    used = set()
    for rule in rules:
        used |= promql_metric_names(rule["expr"])
    for _, dashboard in load_dashboards():
        for _, expr in dashboard_exprs(dashboard):
            used |= promql_metric_names(expr)
    unused = recorded_names() - used
    assert not unused, f"recording rules nobody reads: {sorted(unused)}"
