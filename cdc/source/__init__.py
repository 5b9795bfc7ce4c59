"""The site wing: read a replication slot, build change events, publish them to Kafka."""
