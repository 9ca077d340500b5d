"""The scorer service: consume events, score them with the served detectors, produce anomalies and dead letters, commit on checkpoints, export metrics and alerts."""
