"""``tsad demo`` end to end (real broker child, training, two routed models): exits 0 with a summary."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

TSAD = str(Path(sys.executable).parent / "tsad")


def test_demo_runs_end_to_end():
    out = subprocess.run([TSAD, "demo", "--epochs", "2"], capture_output=True, text=True, timeout=170)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "summary" in text and "labelled windows caught" in text
    published = int(re.search(r"published (\d+) events", text).group(1))
    assert published == 2420 + 677  # the rest of both series
    assert f"events consumed {published} of {published} published" in text
    assert "ec2_cpu_* -> cpu-many-to-many" in text and "traffic-many-to-one" in text
    flagged_by = set(re.findall(r"anomaly flagged by (\S+)\s+(\S+)", text))
    assert ("cpu-many-to-many", "ec2_cpu_utilization_24ae8d") in flagged_by, flagged_by
    assert all(
        model == ("cpu-many-to-many" if series.startswith("ec2_cpu_") else "traffic-many-to-one")
        for model, series in flagged_by
    )
    assert "band=[" in text and "/metrics" in text
