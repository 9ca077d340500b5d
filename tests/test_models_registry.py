"""Tests for models/registry.py: versions, checksums, atomic promote, rollback, idempotency."""

import json
import os

import pytest
import torch

from models.forecasting.bundle import ModelBundle
from models.forecasting.calibration import Calibration
from models.forecasting.forecasters import ForecasterConfig, build_forecaster
from models.forecasting.windows import SeriesNormalizer
from models.registry import CorruptModelError, ModelNotFoundError, ModelRegistry


def make_bundle(seed=0, kind="many-to-many"):
    torch.manual_seed(seed)
    cfg = ForecasterConfig(kind=kind, window=8, hidden=8, horizon=2)
    return ModelBundle(
        name="m",
        kind=kind,
        config=cfg,
        forecaster=build_forecaster(cfg).eval(),
        normalizers={"a/b": SeriesNormalizer(1.5, 2.0)},
        calibration=Calibration(error_mean=0.1, error_std=0.05, k=5.0, threshold=0.35),
        metrics={"val_mse": 0.02},
    )


def test_register_load_roundtrip(tmp_path):
    reg = ModelRegistry(tmp_path)
    b = make_bundle()
    v = reg.register(b, {"extra": 1}, data_range=("2024-01-01", "2024-02-01"), interval_id="2024-02-01")
    assert v == 1 and b.version == 1 and reg.versions("m") == [1]
    assert (tmp_path / "m" / "v0001" / "weights.pt").is_file()
    meta = json.loads((tmp_path / "m" / "v0001" / "meta.json").read_text())
    assert meta["metrics"] == {"val_mse": 0.02, "extra": 1} and len(meta["sha256"]) == 64
    assert meta["data_range"] == ["2024-01-01", "2024-02-01"] and meta["created_at"]
    loaded = reg.load("m", 1)
    assert loaded.config == b.config and loaded.normalizers["a/b"] == (1.5, 2.0) and loaded.version == 1
    assert not loaded.forecaster.training
    assert meta["calibration"] == {"error_mean": 0.1, "error_std": 0.05, "k": 5.0, "threshold": 0.35, "metric": "abs"}
    assert loaded.calibration == b.calibration
    x = torch.randn(2, 5, 1)
    torch.testing.assert_close(loaded.forecaster(x)[0], b.forecaster(x)[0])
    with pytest.raises(ModelNotFoundError):
        reg.load("m")  # no champion yet


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        pytest.param(
            {"metric": "abs", "n": 9, "mean": 0.2, "std": 0.1, "error_mean": 0.2, "error_std": 0.1, "max": 0.9},
            Calibration(n=9, error_mean=0.2, error_std=0.1, error_max=0.9),
            id="legacy-duplicate-keys",
        ),
        pytest.param({"metric": "abs", "n": 0, "k": 5.0}, None, id="legacy-no-errors"),
        pytest.param(None, None, id="none"),
    ],
)
def test_load_reads_calibrations_already_on_disk(tmp_path, stored, expected):
    reg = ModelRegistry(tmp_path)
    v = reg.register(make_bundle())
    meta_path = tmp_path / "m" / "v0001" / "meta.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "calibration": stored}))
    assert reg.load("m", v).calibration == expected


def test_promote_rollback_and_list(tmp_path):
    reg = ModelRegistry(tmp_path)
    v1, v2, v3 = (reg.register(make_bundle(s)) for s in range(3))
    assert reg.champion("m") is None
    reg.promote("m", v1)
    reg.promote("m", v2)
    reg.promote("m", v3)
    assert reg.champion("m") == 3 and reg.load("m").version == 3
    assert reg.rollback("m") == 2 and reg.champion("m") == 2
    assert reg.rollback("m") == 1
    with pytest.raises(ModelNotFoundError):
        reg.rollback("m")
    rows = reg.list("m")
    assert [r.version for r in rows] == [1, 2, 3] and [r.is_champion for r in rows] == [True, False, False]
    assert reg.names() == ["m"]
    leftovers = [p.name for p in (tmp_path / "m").iterdir() if p.name.startswith(".") and p.name != ".lock"]
    assert leftovers == []  # no temp files left behind


def test_promote_is_atomic_replace(tmp_path, monkeypatch):
    reg = ModelRegistry(tmp_path)
    reg.promote("m", reg.register(make_bundle(0)))
    v2 = reg.register(make_bundle(1))
    calls = []
    real_replace = os.replace

    def crashing_replace(src, dst):
        calls.append((src, dst))
        raise OSError("disk died mid-promote")

    monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(OSError):
        reg.promote("m", v2)
    monkeypatch.setattr(os, "replace", real_replace)
    assert calls and str(calls[0][1]).endswith("champion.json")
    assert reg.champion("m") == 1  # old pointer intact, never half-written
    reg.promote("m", v2)
    assert reg.champion("m") == 2


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "meta"])
def test_corrupt_version_is_refused(tmp_path, damage):
    reg = ModelRegistry(tmp_path)
    reg.promote("m", reg.register(make_bundle(0)))
    v2 = reg.register(make_bundle(1))
    weights = tmp_path / "m" / "v0002" / "weights.pt"
    if damage == "flip":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "delete":
        weights.unlink()
    else:
        (tmp_path / "m" / "v0002" / "meta.json").write_text("{not json")
    with pytest.raises(CorruptModelError, match="v2"):
        reg.load("m", v2)
    with pytest.raises(CorruptModelError):
        reg.promote("m", v2)
    assert reg.champion("m") == 1 and reg.load("m").version == 1


def test_checksum_valid_but_wrong_weights_refused(tmp_path):
    reg = ModelRegistry(tmp_path)
    v = reg.register(make_bundle(0))
    meta_path = tmp_path / "m" / "v0001" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["hidden"] = 16  # weights no longer fit the architecture
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CorruptModelError, match="cannot load"):
        reg.load("m", v)


def test_idempotency_key(tmp_path):
    reg = ModelRegistry(tmp_path)
    a = reg.register(make_bundle(0), idempotency_key="dag-run-2024-01-01")
    b = reg.register(make_bundle(1), idempotency_key="dag-run-2024-01-01")
    c = reg.register(make_bundle(2), idempotency_key="dag-run-2024-01-02")
    assert a == b == 1 and c == 2 and reg.versions("m") == [1, 2]
    assert reg.list("m")[0].idempotency_key == "dag-run-2024-01-01"


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda m: m.update(normalizers={"a": {"mean": 1.0}}), id="normalizer-missing-std"),
        pytest.param(lambda m: m.update(normalizers={"a": 3}), id="normalizer-not-a-pair"),
        pytest.param(lambda m: m.update(normalizers=[1, 2]), id="normalizers-not-an-object"),
        pytest.param(lambda m: m.update(normalizers={"a": {"mean": "nan", "std": 1.0}}), id="normalizer-nan"),
        pytest.param(lambda m: m.update(calibration=[0.1]), id="calibration-not-an-object"),
        pytest.param(lambda m: m.update(kind="many-to-one"), id="kind-mismatch"),
        pytest.param(lambda m: m.pop("kind"), id="kind-missing"),
        pytest.param(lambda m: m.pop("config"), id="config-missing"),
        pytest.param(lambda m: m.update(config="lstm"), id="config-not-an-object"),
    ],
)
def test_corrupt_meta_raises_corrupt_model_error(tmp_path, edit):
    reg = ModelRegistry(tmp_path)
    reg.register(make_bundle(0))
    v = reg.register(make_bundle(1))
    meta_path = tmp_path / "m" / f"v{v:04d}" / "meta.json"
    meta = json.loads(meta_path.read_text())
    edit(meta)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CorruptModelError, match=f"v{v}"):
        reg.load("m", v)
    reg.promote("m", 1)
    with pytest.raises(CorruptModelError):
        reg.promote("m", v)
    assert reg.champion("m") == 1


def test_meta_that_is_not_an_object_is_corrupt(tmp_path):
    reg = ModelRegistry(tmp_path)
    v = reg.register(make_bundle(0))
    (tmp_path / "m" / "v0001" / "meta.json").write_text("[1, 2]")
    with pytest.raises(CorruptModelError):
        reg.load("m", v)
    assert [r.ok for r in reg.list("m")] == [False]


def test_write_json_atomic_removes_its_temp_file_on_failure(tmp_path):
    from models.registry import _write_json_atomic

    target = tmp_path / "champion.json"
    target.write_text('{"version": 1}')
    with pytest.raises(TypeError):
        _write_json_atomic(target, {"version": object()})  # not JSON-serialisable, fails mid-write
    assert [p.name for p in tmp_path.iterdir()] == ["champion.json"]
    assert json.loads(target.read_text()) == {"version": 1}
