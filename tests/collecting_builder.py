"""The event builder as the source daemon drives it, for tests that read its records.

The builder returns records, each preceded by the schemas it needs published
(:class:`~cdc.source.event_builder.PublishSchema`); the daemon publishes those. Here each goes to
``on_new_schema`` (or nowhere), in the order the daemon would publish it, and only the records
come back, so a test reads records as Kafka would hold them.
"""

from __future__ import annotations

from typing import Any, Callable

from cdc.core.wire.avro import Codec
from cdc.core.wire.model import Record
from cdc.source.event_builder import EventBuilder, Output, PublishSchema


class CollectingBuilder(EventBuilder):
    def __init__(self, *args: Any, on_new_schema: Callable[[Codec], None] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._publish = on_new_schema

    def _split(self, outputs: list[Output]) -> list[Record]:
        records: list[Record] = []
        for item in outputs:
            if isinstance(item, PublishSchema):
                if self._publish is not None:
                    self._publish(item.codec)
            else:
                records.append(item)
        return records

    def handle(self, msg: object, lsn: int = 0) -> list[Record]:  # type: ignore[override]
        return self._split(super().handle(msg, lsn))

    def snapshot_row(self, oid: int, values: tuple) -> list[Record]:  # type: ignore[override]
        return self._split(super().snapshot_row(oid, values))

    def position(self, server_lsn: int, at_us: int) -> list[Record]:  # type: ignore[override]
        return self._split(super().position(server_lsn, at_us))
