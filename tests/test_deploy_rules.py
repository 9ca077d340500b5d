"""Prometheus config and rules pass promtool, and every alert is unit-tested both ways.

Runs ``promtool check config``, ``promtool check rules`` and ``promtool test rules`` (Debian's
``prometheus`` package, ``make prometheus``) on ``deploy/prometheus``. Also checks the rule
conventions: CamelCase alert names with severity, summary, description and a runbook link to
its section of docs/operations.md (the anchor must exist there, as must the target of every other
runbook link in deploy/ and pipeline/); ``level:metric:operations`` recording names; and
that the promtool tests hold, for every alert, a case where it fires and one where it stays
silent. A deliberately wrong expectation must make promtool fail (the tests can fail).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

PROMETHEUS_DIR = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
REPO_ROOT = Path(__file__).resolve().parent.parent
RUNBOOK = REPO_ROOT / "docs" / "operations.md"
REPO_URL = "https://github.com/tsad/tsad/blob/main/"
RUNBOOK_URL = REPO_URL + "docs/operations.md#alert-{}"
# A link into this repository's files on GitHub, e.g. ".../blob/main/docs/operations.md#runbook".
REPO_LINK = re.compile(re.escape(REPO_URL) + r"([\w./-]+?)(?:#([\w-]+))?(?=[\s\"'`)>]|$)", re.MULTILINE)
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess:
    if not Path(PROMTOOL).exists():
        pytest.fail("promtool not found: run `make prometheus` (Debian package prometheus)")
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def alerting_rules() -> list[dict]:
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub makes for headings, plus explicit <a id="..."> / <a name="...">.

    Lines inside fenced code blocks are not headings (a ``# comment`` in a bash block)."""
    markdown = re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL)
    anchors = set(re.findall(r'<a\s+(?:id|name)="([^"]+)"', markdown))
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_promtool_check_config():
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules():
    assert RULE_FILES
    result = promtool("check", "rules", *[str(p) for p in RULE_FILES])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests_pass():
    assert RULE_TESTS
    result = promtool("test", "rules", *[str(p) for p in RULE_TESTS])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests_can_fail(tmp_path):
    """The same test file with one expected label changed must fail."""
    source = PROMETHEUS_DIR / "tests" / "scorer_down.yml"
    broken = source.read_text().replace('instance: "scorer-2:9464"}', 'instance: "scorer-1:9464"}', 1)
    assert broken != source.read_text()
    broken = broken.replace("../rules/", str(PROMETHEUS_DIR / "rules") + "/")
    (tmp_path / "broken.yml").write_text(broken)
    result = promtool("test", "rules", "broken.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "TsadScorerDown" in result.stdout + result.stderr


def test_alerts_follow_conventions():
    alerts = alerting_rules()
    assert len(alerts) >= 7
    names = [rule["alert"] for rule in alerts]
    assert len(set(names)) == len(names), names
    for rule in alerts:
        name = rule["alert"]
        assert re.fullmatch(r"Tsad(?:[A-Z][a-z0-9]+)+", name), f"{name}: CamelCase with Tsad prefix"
        assert rule["labels"]["severity"] in {"page", "ticket"}, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        assert annotations["runbook"] == RUNBOOK_URL.format(name.lower()), name


def test_the_issue_symptoms_each_have_an_alert():
    names = {rule["alert"] for rule in alerting_rules()}
    assert {
        "TsadScorerDown",
        "TsadNoEventsScored",
        "TsadConsumerLagGrowing",
        "TsadAnomalyRateHigh",
        "TsadDeadLetterRateHigh",
        "TsadEndToEndLatencyHigh",
        "TsadModelStale",
    } <= names
    stale = next(rule for rule in alerting_rules() if rule["alert"] == "TsadModelStale")
    assert "tsad_retrain_last_success" in stale["expr"] or "model:tsad_retrain_last_success" in stale["expr"]


def test_every_runbook_link_has_a_section():
    """Each alert's runbook URL names a heading of docs/operations.md, parsed from the markdown."""
    anchors = github_anchors(RUNBOOK.read_text())
    assert "runbook" in anchors and "alert-tsadscorerdown" in anchors  # the parser sees the headings
    assert "alert-tsadnosuchalert" not in anchors
    missing = []
    for rule in alerting_rules():
        path, _, anchor = rule["annotations"]["runbook"].removeprefix(REPO_URL).partition("#")
        if path != "docs/operations.md" or anchor not in anchors:
            missing.append(rule["alert"])
    assert not missing, f"docs/operations.md has no runbook section for {missing}"


def repo_links(*roots: str) -> list[tuple[str, str, str]]:
    """(file, linked path, anchor) for every GitHub link into this repository under ``roots``."""
    links = []
    for root in roots:
        for path in sorted((REPO_ROOT / root).rglob("*")):
            if (
                path.suffix not in {".yml", ".yaml", ".json", ".py", ".service", ".example"}
                or "__pycache__" in path.parts
            ):
                continue
            for match in REPO_LINK.finditer(path.read_text()):
                links.append((str(path.relative_to(REPO_ROOT)), match.group(1), match.group(2) or ""))
    return links


def test_every_link_into_the_docs_resolves():
    """Runbook and documentation links in deploy/ (rules, dashboard, units) and pipeline/ (the
    Alertmanager sink's runbook) point at a file that exists and, with an anchor, at a heading in it."""
    links = repo_links("deploy", "pipeline")
    assert any(anchor == "runbook" for _, _, anchor in links)  # the dashboard link is found
    broken = []
    for source, target, anchor in links:
        target_path = REPO_ROOT / target
        if not target_path.is_file():
            broken.append(f"{source}: {target} does not exist")
        elif anchor and anchor not in github_anchors(target_path.read_text()):
            broken.append(f"{source}: {target} has no heading for #{anchor}")
    assert not broken, "\n".join(broken)


def test_recording_rule_names_are_level_metric_operations():
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule["record"]
                    assert "_total" not in rule["record"].split(":")[1], rule["record"]


def test_every_alert_has_a_firing_and_a_silent_promtool_case():
    fires, silent = set(), set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alerting_rules()}
    assert names - fires == set(), f"never shown firing: {names - fires}"
    assert names - silent == set(), f"never shown silent: {names - silent}"
