"""The fixed Avro schemas (``*.avsc``): source block, Begin, Commit. Loaded by cdc.core.wire.avro."""
