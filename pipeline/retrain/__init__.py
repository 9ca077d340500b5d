"""Retraining orchestration (offline, Kafka-free): read the archive, train both forecaster kinds, evaluate against the champion, promote."""
