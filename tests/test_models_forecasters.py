"""Tests for models/forecasters.py: shapes, step() == forward(), step throughput smoke test."""

import time

import pytest
import torch

from models.forecasters import ForecasterConfig, ManyToMany, ManyToOne, build_forecaster


def test_many_to_one_shape():
    model = build_forecaster(ForecasterConfig(kind="many-to-one", window=16, hidden=8))
    assert isinstance(model, ManyToOne)
    assert model(torch.randn(5, 16, 1)).shape == (5, 1)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("decoder", ["stateful", "encoder-decoder"])
def test_step_equals_forward(cell, decoder):
    torch.manual_seed(0)
    cfg = ForecasterConfig(kind="many-to-many", window=8, horizon=3, hidden=16, layers=2, cell=cell, decoder=decoder)
    model = build_forecaster(cfg).eval()
    assert isinstance(model, ManyToMany)
    x = torch.randn(4, 30, 1)
    with torch.no_grad():
        full, (h_end, c_end) = model(x)
        # chunked forward carrying state (how training and the scorer see it) equals one pass
        first, state = model(x[:, :13])
        second, state = model(x[:, 13:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), full, atol=1e-5, rtol=1e-5)
    assert full.shape == (4, 30, 3)
    state = model.init_state(4)
    assert state[0].shape == (2, 4, 16)
    steps = []
    for t in range(x.shape[1]):
        pred, state = model.step(x[:, t], state)
        steps.append(pred)
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state[0], h_end, atol=1e-5, rtol=1e-5)
    if cell == "lstm":
        torch.testing.assert_close(state[1], c_end, atol=1e-5, rtol=1e-5)


def test_config_validation_and_roundtrip():
    cfg = ForecasterConfig(kind="many-to-many", horizon=4, cell="gru")
    assert ForecasterConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        ForecasterConfig(kind="many-to-few")


def test_step_is_fast_for_1000_series():
    torch.set_num_threads(1)
    model = build_forecaster(ForecasterConfig(kind="many-to-many", hidden=64)).eval()
    state = model.init_state(1000)
    x = torch.randn(1000, 1)
    for _ in range(5):
        model.step(x, state)
    n = 50
    t0 = time.perf_counter()
    for _ in range(n):
        _, state = model.step(x, state)
    rate = n * 1000 / (time.perf_counter() - t0)
    assert rate > 50_000, f"{rate:.0f} events/s"  # ~0.4-1M/s on an idle core; loose bound for a shared CI box
