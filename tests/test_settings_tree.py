"""The one frozen settings tree (models/core/settings.py): every environment name that worked before
still works, the retraining knobs included, overrides win over the environment, nothing mutates it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsError

from models.core.limits import MAX_MESSAGE_BYTES, MAX_SERIES_ID_LENGTH
from models.core.settings import Settings, load_settings
from pipeline.retrain.contracts import Job, plan_jobs
from pipeline.retrain.tasks import run_settings


def test_retraining_knobs_keep_their_environment_names(monkeypatch):
    monkeypatch.setenv("TSAD_RETRAIN_EPOCHS", "3")
    monkeypatch.setenv("TSAD_RETRAIN_KINDS", '["many-to-one"]')
    monkeypatch.setenv("TSAD_RETRAIN_GROUPS", '{"cpu": "ec2_*", "web": ["speed_*", "www_*"]}')
    monkeypatch.setenv("TSAD_RETRAIN_SCHEDULE", "0 */6 * * *")
    monkeypatch.setenv("TSAD_PUSHGATEWAY_URL", "pushgateway:9091")
    monkeypatch.setenv("TSAD_ARCHIVE_DIR", "/data/archive")
    monkeypatch.setenv("TSAD_KAFKA__EVENTS_TOPIC", "ev")
    settings = Settings()
    assert settings.retrain.epochs == 3 and settings.retrain.kinds == ("many-to-one",)
    assert settings.retrain.schedule == "0 */6 * * *" and settings.retrain.pushgateway_url == "pushgateway:9091"
    assert settings.archive_dir == "/data/archive" and settings.kafka.events_topic == "ev"
    assert plan_jobs(settings) == [
        Job("cpu", ("ec2_*",), "many-to-one"),
        Job("web", ("speed_*", "www_*"), "many-to-one"),
    ]


def test_overrides_win_and_none_means_not_given(monkeypatch):
    monkeypatch.setenv("TSAD_RETRAIN_EPOCHS", "3")
    monkeypatch.setenv("TSAD_RETRAIN_HIDDEN", "8")
    monkeypatch.setenv("TSAD_KAFKA__GROUP_ID", "from-env")
    monkeypatch.setenv("TSAD_REGISTRY_DIR", "/env/registry")
    settings = load_settings(
        registry_dir=None, kafka={"bootstrap_servers": "h:1", "group_id": None}, retrain={"epochs": 5}
    )
    assert settings.registry_dir == "/env/registry"
    assert settings.kafka.bootstrap_servers == "h:1" and settings.kafka.group_id == "from-env"
    assert settings.retrain.epochs == 5 and settings.retrain.hidden == 8  # the rest of the env is kept
    dag_run = run_settings({"epochs": None, "window": 16})  # DAG params: None = not given
    assert dag_run.retrain.epochs == 3 and dag_run.retrain.window == 16


def test_the_tree_is_frozen_and_limits_come_from_one_place():
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.max_series = 1
    with pytest.raises(ValidationError):
        settings.kafka.events_topic = "x"
    with pytest.raises(ValidationError):
        settings.retrain.epochs = 1
    assert settings.max_message_bytes == MAX_MESSAGE_BYTES
    assert settings.max_series_id_length == MAX_SERIES_ID_LENGTH


def test_the_cli_kind_choices_are_the_kinds():
    from models.core.kinds import KINDS
    from pipeline.cli.models import Kind

    assert tuple(k.value for k in Kind) == KINDS


def test_an_unknown_kind_or_bad_json_is_refused(monkeypatch):
    with pytest.raises(ValidationError, match="many-to-one"):
        load_settings(retrain={"kinds": ["lstm"]})
    monkeypatch.setenv("TSAD_RETRAIN_GROUPS", "{not json")
    with pytest.raises(SettingsError, match="TSAD_RETRAIN_GROUPS must be JSON"):
        Settings()
