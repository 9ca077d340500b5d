"""Error -> anomaly detectors, one algorithm per module; higher score = more anomalous.

Every detector is vectorised streaming state over many series (``update(series_idx (n,), errors (n,))
-> scores (n,)``), with ``score_one`` and a batch path ``score_batch(errors (series, time))`` giving
the same numbers, and ``is_anomaly(scores)`` comparing against its ``threshold`` (in score units).
``error_likelihood.ErrorLikelihood`` (likelihood + spatial check + refractory period) is the live
scorer's final step (``threshold_method="likelihood"``); its ``step`` also returns the flags. It is
the one anomaly-likelihood implementation (errors-only ``update`` scores NaN errors 0, not NaN).
Its time-of-day parts live in their own modules: ``time_of_day.TimeOfDayProfile`` (the usual level
of each hour) and ``daily_repeat.DailyRepeats`` (an alarm in the same hour as yesterday's).
"""

from models.detection.thresholds.error_likelihood import ErrorLikelihood, LikelihoodConfig, tail_score
from models.detection.thresholds.static import StaticThreshold
from models.detection.thresholds.telemanom import TelemanomThreshold, find_anomalies, find_epsilon, prune_sequences

__all__ = [
    "ErrorLikelihood",
    "LikelihoodConfig",
    "StaticThreshold",
    "TelemanomThreshold",
    "find_anomalies",
    "find_epsilon",
    "prune_sequences",
    "tail_score",
]
