"""The wire contract: the event model, control records, Avro schemas and both framings."""
