"""The live scorer's detector as the backtest imports it (one place to switch the import).

Until ``pipeline/scoring.py`` carries the likelihood step this points at ``_scoring_proto`` (a
copy of pipeline/scoring.py with ``threshold_method="likelihood"``); afterwards at pipeline.scoring.
"""

from pipeline.backtest._scoring_proto import DetectorConfig, StreamingDetector  # noqa: F401
