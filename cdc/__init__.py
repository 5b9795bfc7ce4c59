"""Tributary: site-side change data capture (pgoutput -> Avro -> Kafka) and shared pieces."""
