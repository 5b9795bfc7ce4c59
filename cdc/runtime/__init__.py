"""What both daemons run on: logging, metrics, health probes, retry, PostgreSQL session
settings, Kafka client settings, failpoints. Imports only ``cdc.core`` and itself."""
