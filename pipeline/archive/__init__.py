"""The event archive: ``format`` (Kafka-free Parquet schema, layout, read and write) and ``consumer`` (the Kafka consumer that writes it)."""
