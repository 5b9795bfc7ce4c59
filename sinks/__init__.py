"""Tributary cloud side: consume change events from Kafka and apply them to PostgreSQL."""
