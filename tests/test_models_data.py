"""models/forecasting/data.py: Parquet timestamps in epoch seconds, NAB label windows (the one shared loader)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from models.forecasting.data import load_label_windows, load_training_data


def test_parquet_float_epoch_seconds_are_read_as_seconds_not_nanoseconds(tmp_path):
    t0 = pd.Timestamp("2024-03-01T10:00:00Z").timestamp()
    frame = pd.DataFrame({"series": "s", "ts": t0 + 300.0 * np.arange(12), "value": np.arange(12.0)})
    path = tmp_path / "events.parquet"
    frame.to_parquet(path)
    data = load_training_data(path)
    assert data.start == "2024-03-01T10:00:00" and data.end == "2024-03-01T10:55:00"
    assert len(data.series["s"]) == 12  # a 300 s grid, not 12 points squeezed into 3.3 microseconds
    np.testing.assert_allclose(data.timestamps["s"], frame["ts"].to_numpy())


def test_parquet_datetime_column_still_works(tmp_path):
    stamps = pd.date_range("2024-03-01", periods=5, freq="h", tz="UTC")
    path = tmp_path / "events.parquet"
    pd.DataFrame({"series": "s", "ts": stamps, "value": np.arange(5.0)}).to_parquet(path)
    assert load_training_data(path).start == "2024-03-01T00:00:00"


def test_label_windows_are_epoch_seconds_utc_keyed_by_file(nab_dir):
    labels = load_label_windows(nab_dir / "labels" / "combined_windows.json")
    raw = json.loads((nab_dir / "labels" / "combined_windows.json").read_text())
    assert set(labels) == set(raw)
    key = next(k for k, v in raw.items() if v)
    a, b = labels[key][0]
    assert a == pd.Timestamp(raw[key][0][0], tz="UTC").timestamp() and b > a


@pytest.mark.parametrize("text", ["[1, 2]", '{"f.csv": [["not a date", "2024-01-01"]]}', '{"f.csv": [1]}'])
def test_bad_label_file_raises_value_error_naming_it(tmp_path, text):
    path = tmp_path / "labels.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"labels\.json"):
        load_label_windows(path)
