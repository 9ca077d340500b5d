"""``tsad demo`` end to end (real broker child, training, two scorers): exits 0 with a summary."""

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
    (row,) = [line for line in text.splitlines() if "events consumed" in line]
    consumed = [int(n) for n in re.findall(r"\d+", row)]
    assert published == 2420 and consumed == [published, published], row  # both scorers consumed every event
    assert text.count("/metrics") >= 2
