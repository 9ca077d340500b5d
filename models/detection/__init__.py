"""Kafka-free streaming detection: ``StreamingDetector`` composes a forecaster step with a threshold policy and keeps per-series state; ``thresholds/`` holds the policies."""
