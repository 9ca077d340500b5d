"""Error -> anomaly score: the anomaly likelihood the detector's ``"likelihood"`` policy steps.

``error_likelihood.ErrorLikelihood`` (likelihood + spatial check + refractory period) is vectorised
streaming state over many series: ``step(series_idx (n,), errors (n,), ...) -> (scores, flags)``,
with ``update``/``score_one``/``score_batch`` (``models.core.streaming.StreamingState``) giving the
same numbers, and ``is_anomaly(scores)`` comparing against its ``threshold``. NaN errors score 0.
Its time-of-day parts live in their own modules: ``time_of_day.TimeOfDayProfile`` (the usual level
of each hour) and ``daily_repeat.DailyRepeats`` (an alarm in the same hour as yesterday's).
"""

from models.detection.thresholds.error_likelihood import ErrorLikelihood, LikelihoodConfig, tail_score

__all__ = [
    "ErrorLikelihood",
    "LikelihoodConfig",
    "tail_score",
]
