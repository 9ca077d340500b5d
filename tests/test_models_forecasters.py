"""Tests for models/forecasting/forecasters.py: shapes, step() == forward(), batched step() == per-series step()."""

import pytest
import torch

from models.forecasting.forecasters import ForecasterConfig, ManyToMany, ManyToOne, build_forecaster


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


def test_step_for_1000_series_at_once_equals_each_series_alone():
    # batch independence: one step() over (1000, features) == the rows stepped separately
    # (throughput is measured by benchmarks/bench_e2e.py, not asserted here)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = build_forecaster(ForecasterConfig(kind="many-to-many", hidden=64)).eval()
        state = model.init_state(1000)
        xs = torch.randn(3, 1000, 1)
        with torch.no_grad():
            for x in xs:
                pred, state = model.step(x, state)
            rows = [0, 1, 517, 999]
            for r in rows:
                alone = model.init_state(1)
                for x in xs:
                    p1, alone = model.step(x[r : r + 1], alone)
                torch.testing.assert_close(p1, pred[r : r + 1], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(alone[0], state[0][:, r : r + 1], atol=1e-5, rtol=1e-5)
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
