"""Error -> anomaly detectors, one algorithm per module; higher score = more anomalous.

Every detector is vectorised streaming state over many series (``update(series_idx (n,), errors (n,))
-> scores (n,)``), with ``score_one`` and a batch path ``score_batch(errors (series, time))`` giving
the same numbers, and ``is_anomaly(scores)`` comparing against its ``threshold`` (in score units).
"""

from models.thresholds.likelihood import AnomalyLikelihood, log_likelihood
from models.thresholds.static import StaticThreshold
from models.thresholds.telemanom import TelemanomThreshold, find_epsilon, find_anomalies, prune_sequences

__all__ = [
    "AnomalyLikelihood", "StaticThreshold", "TelemanomThreshold",
    "find_anomalies", "find_epsilon", "log_likelihood", "prune_sequences",
]
