"""Kafka plumbing shared by the runtime: client settings, the embedded broker, the event publisher and the fetch feed (in-process or in a child process)."""
