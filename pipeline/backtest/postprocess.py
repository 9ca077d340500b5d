"""Moved: the error -> score post-processing now lives in ``models.thresholds.error_likelihood``.

Kept as an alias so older imports keep working.
"""

from models.thresholds.error_likelihood import ErrorLikelihood, LikelihoodConfig, score_series, tail_score

__all__ = ["ErrorLikelihood", "LikelihoodConfig", "score_series", "tail_score"]
