"""Tests for pipeline/cli/models.py and models/forecasting/data.py: train -> registry, list/promote/rollback, loaders."""

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from models.forecasting.data import load_training_data, load_training_series
from models.registry import ModelRegistry
from pipeline.cli.models import register


@pytest.fixture()
def app():
    app = typer.Typer()
    register(app)
    return app


def write_nab(path, n=400, start="2024-01-01", freq="5min", drop=()):
    ts = pd.date_range(start, periods=n, freq=freq)
    values = np.sin(np.arange(n) / 5.0)
    df = pd.DataFrame({"timestamp": ts, "value": values}).drop(index=list(drop))
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)


def test_loaders(tmp_path):
    write_nab(tmp_path / "d" / "real" / "a.csv", drop=range(10, 15))
    write_nab(tmp_path / "d" / "b.csv", n=300)
    series = load_training_series(tmp_path / "d")
    assert set(series) == {"real/a", "b"}
    assert len(series["real/a"]) == 400 and np.isnan(series["real/a"][10:15]).all()  # gap -> NaN
    assert list(load_training_series(tmp_path / "d" / "b.csv")) == ["b"]
    pq = pd.DataFrame(
        {"series": ["x"] * 3 + ["y"] * 2, "ts": pd.date_range("2024", periods=5, freq="1h"), "value": [1.0, 2, 3, 4, 5]}
    )
    pq.to_parquet(tmp_path / "p.parquet")
    data = load_training_data(tmp_path / "p.parquet")
    assert set(data.series) == {"x", "y"} and data.series["y"].tolist() == [4.0, 5.0]
    assert data.data_range == ("2024-01-01T00:00:00", "2024-01-01T04:00:00")


def test_train_and_manage(tmp_path, app):
    write_nab(tmp_path / "data" / "s1.csv")
    runner = CliRunner()
    reg_dir = str(tmp_path / "reg")
    common = [
        "train",
        str(tmp_path / "data"),
        "--registry",
        reg_dir,
        "--window",
        "8",
        "--hidden",
        "8",
        "--epochs",
        "2",
        "--no-progress",
        "--threads",
        "1",
    ]
    r = runner.invoke(app, [*common, "--kind", "many-to-many"])
    assert r.exit_code == 0, r.output
    assert "default v1" in r.output and "windows/s" in r.output
    r = runner.invoke(app, [*common, "--kind", "many-to-one", "--no-promote"])
    assert r.exit_code == 0, r.output
    reg = ModelRegistry(reg_dir)
    assert reg.champion("default") == 1 and reg.versions("default") == [1, 2]
    assert reg.load("default", 2).meta["data_range"][0].startswith("2024-01-01")
    r = runner.invoke(app, ["models", "list", "--registry", reg_dir])
    assert r.exit_code == 0 and "many-to-one" in r.output
    assert runner.invoke(app, ["models", "promote", "default", "2", "--registry", reg_dir]).exit_code == 0
    assert reg.champion("default") == 2
    r = runner.invoke(app, ["models", "rollback", "default", "--registry", reg_dir])
    assert r.exit_code == 0 and reg.champion("default") == 1
    (tmp_path / "reg" / "default" / "v0002" / "weights.pt").write_bytes(b"garbage")
    r = runner.invoke(app, ["models", "promote", "default", "2", "--registry", reg_dir])
    assert r.exit_code == 1 and reg.champion("default") == 1


def test_registry_defaults_to_the_tsad_registry_dir_setting(tmp_path, app, monkeypatch):
    write_nab(tmp_path / "data" / "s1.csv", n=200)
    reg_dir = tmp_path / "from-env"
    monkeypatch.setenv("TSAD_REGISTRY_DIR", str(reg_dir))
    runner = CliRunner()
    common = [
        "train",
        str(tmp_path / "data"),
        "--window",
        "8",
        "--hidden",
        "8",
        "--epochs",
        "1",
        "--no-progress",
        "--threads",
        "1",
    ]
    for _ in range(2):
        r = runner.invoke(app, common)
        assert r.exit_code == 0, r.output
    reg = ModelRegistry(reg_dir)
    assert reg.versions("default") == [1, 2] and reg.champion("default") == 2
    r = runner.invoke(app, ["models", "list"])
    assert r.exit_code == 0 and "default" in r.output
    assert runner.invoke(app, ["models", "rollback", "default"]).exit_code == 0 and reg.champion("default") == 1
    assert runner.invoke(app, ["models", "promote", "default", "2"]).exit_code == 0 and reg.champion("default") == 2
