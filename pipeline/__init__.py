"""tsad streaming runtime: event schema, Kafka plumbing, the scorer loop, metrics and the CLI."""
