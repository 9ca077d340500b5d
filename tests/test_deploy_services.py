"""systemd units, the environment file example and docker-compose.yml are sound.

Units go through ``systemd-analyze verify`` (which only warns on unknown keys or bad values, so
any output fails the test) with ExecStart pointed at this venv's ``tsad``; their required
settings (non-root user, restart, limits, hardening, EnvironmentFile) are checked by key. Every
``TSAD_`` variable of ``tsad.env.example`` must be one ``models/core/settings.py`` reads (or one of
the few the units or the DAG read). No Docker Compose here: the compose file is checked as YAML
(exact image versions, the services the issue lists, scorer replicas <= partitions).
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from models.core.settings import KafkaSettings, Settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SYSTEMD = DEPLOY / "systemd"
UNITS = sorted(SYSTEMD.glob("*.service"))
# Read by the units' ExecStart (TSAD_MODEL), not by models/core/settings.py.
UNIT_ONLY_VARS = {"TSAD_MODEL"}


def read_unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def test_units_exist():
    names = {unit.name for unit in UNITS}
    assert {"tsad-serve.service", "tsad-serve@.service", "tsad-archive.service"} <= names


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_has_required_settings(unit):
    service = read_unit(unit)["Service"]
    assert service["User"] not in {"root", "0"}
    assert service["Restart"] == "on-failure"
    assert service["EnvironmentFile"] == "/etc/tsad/tsad.env"
    assert re.fullmatch(r"\d+[KMG]", service["MemoryMax"])
    assert re.fullmatch(r"\d+%", service["CPUQuota"])
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert service[key] == value, f"{unit.name}: {key}"
    assert read_unit(unit)["Install"]["WantedBy"] == "multi-user.target"


def test_units_pass_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze not found (apt-get install systemd)")
    tsad = Path(sys.executable).with_name("tsad")
    assert tsad.exists(), tsad
    targets = []
    for unit in UNITS:
        text = unit.read_text().replace("/opt/tsad/.venv/bin/tsad", str(tsad))
        (tmp_path / unit.name).write_text(text)
        targets.append(str(tmp_path / unit.name))
    # A template is verified through an instance of it.
    (tmp_path / "tsad-serve@2.service").write_text((tmp_path / "tsad-serve@.service").read_text())
    targets.append(str(tmp_path / "tsad-serve@2.service"))
    result = subprocess.run([analyze, "verify", "--man=no", *targets], capture_output=True, text=True, timeout=60)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not output, output


def test_systemd_analyze_verify_reports_a_bad_unit(tmp_path):
    """The check above can fail: an unknown key and a bad Restart value produce output."""
    bad = tmp_path / "bad.service"
    bad.write_text("[Service]\nExecStart=/bin/true\nRestartt=on-failure\nRestart=sometimes\n")
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert (result.stdout + result.stderr).strip()


def test_template_ports_do_not_collide_with_the_single_unit():
    template = read_unit(SYSTEMD / "tsad-serve@.service")["Service"]["ExecStart"]
    single = read_unit(SYSTEMD / "tsad-serve.service")["Service"]["ExecStart"]
    assert "--metrics-port 947%i" in template and "--metrics-port 9464" in single


def env_example() -> dict[str, str]:
    values = {}
    for line in (SYSTEMD / "tsad.env.example").read_text().splitlines():
        line = line.strip()
        if line.startswith("#TSAD_"):
            line = line[1:]
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def test_env_example_names_only_real_settings(monkeypatch):
    values = env_example()
    assert "TSAD_KAFKA__BOOTSTRAP_SERVERS" in values
    for key in list(values):
        monkeypatch.delenv(key, raising=False)
    settings_vars = {k: v for k, v in values.items() if k not in UNIT_ONLY_VARS}
    for key, value in settings_vars.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    for key, value in settings_vars.items():
        path = key.removeprefix("TSAD_").lower().split("__")
        current = settings
        for part in path:
            assert hasattr(current, part), f"{key} is not a setting of models/core/settings.py"
            current = getattr(current, part)
        assert str(current) == value, f"{key}={value} read as {current!r}"


def test_env_example_covers_every_setting():
    values = env_example()
    expected = {f"TSAD_{name.upper()}" for name in Settings.model_fields if name not in ("kafka", "retrain")}
    expected |= {f"TSAD_KAFKA__{name.upper()}" for name in KafkaSettings.model_fields}
    assert expected - set(values) == set(), f"not documented in tsad.env.example: {expected - set(values)}"


# ---------------------------------------------------------------- docker-compose


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_has_the_stack(compose):
    assert {"kafka", "prometheus", "grafana", "scorer", "archiver", "airflow", "pushgateway"} <= set(
        compose["services"]
    )


def test_compose_images_are_pinned_to_exact_versions(compose):
    for name, service in compose["services"].items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and re.fullmatch(r"v?\d+\.\d+\.\d+(?:-[\w.]+)?", tag), f"{name}: {image} not pinned"
    dockerfiles = [DEPLOY / "docker" / "Dockerfile", DEPLOY / "docker" / "airflow.Dockerfile"]
    for dockerfile in dockerfiles:
        for image in re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(), flags=re.MULTILINE):
            assert re.search(r":v?\d+\.\d+\.\d+", image), f"{dockerfile.name}: {image} not pinned"


def test_compose_scorer_replicas_fit_the_partitions(compose):
    scorer = compose["services"]["scorer"]
    partitions = int(scorer["environment"]["TSAD_KAFKA__PARTITIONS"])
    assert 1 <= scorer["deploy"]["replicas"] <= partitions


def test_compose_mounts_the_prometheus_config_and_rules(compose):
    volumes = compose["services"]["prometheus"]["volumes"]
    assert "./prometheus:/etc/prometheus:ro" in volumes
    assert "--config.file=/etc/prometheus/prometheus.yml" in compose["services"]["prometheus"]["command"]


def test_env_example_keeps_metrics_on_loopback():
    # /metrics has no auth: exposing it beyond the host must be a deliberate edit
    assert env_example()["TSAD_METRICS_HOST"] == "127.0.0.1"


def test_compose_alertmanager_receives_prometheus_and_scorer_alerts(compose):
    services = compose["services"]
    assert "./alertmanager:/etc/alertmanager:ro" in services["alertmanager"]["volumes"]
    assert services["scorer"]["environment"]["TSAD_ALERTMANAGER_URL"] == "http://alertmanager:9093"
    assert services["scorer"]["environment"]["TSAD_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"  # the shared env kept
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets == ["alertmanager:9093"]


def test_alertmanager_config_is_valid():
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.fail("amtool not found: run `make prometheus` (Debian package prometheus-alertmanager)")
    result = subprocess.run(
        [amtool, "check-config", str(DEPLOY / "alertmanager" / "alertmanager.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
