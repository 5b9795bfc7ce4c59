"""pgoutput messages -> encoded Kafka records (key, value) of change events.

Pure: the only outside facts come through the type lookup (SQL names of non-built-in types) and
the ``on_new_schema`` callback, which the source uses to publish a schema before its first use.

Per site transaction the stream carries: a Begin record, one record per change (a delete is
followed by a tombstone for its key; an update that changes the key is followed by a tombstone
for the old key), and a Commit record that counts the changes. The Commit's ``end_lsn`` is what
the source may confirm to the slot once every record up to it is acknowledged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from cdc.avro import Codec, control_schema, envelope_schema, key_schema
from cdc.errors import DecodeError, SchemaError
from cdc.pgoutput import (
    UNCHANGED_TOAST, Begin, Commit, Delete, Insert, Message, Relation, Truncate, Update,
    pg_us_to_unix_us,
)
from cdc.relations import RelationCache, TableInfo
from cdc.values import CONVERTERS, TypeLookup

#: Kafka key of control records (Begin, Commit): compacted topics need a key on every record.
CONTROL_KEY = b"\x00tributary.tx"

Record = tuple[bytes, bytes | None]
"""An encoded Kafka record: (key, value); value None is a tombstone."""


@dataclass(frozen=True, slots=True)
class SiteIdentity:
    """Who the events come from; the sink keys its progress by this."""

    site_id: str
    system_id: str
    timeline: int
    slot: str
    database: str


class _TableCodec:
    """Everything needed to turn one table version's tuples into records, built once."""

    __slots__ = ("info", "value", "key", "fields", "converters", "key_positions", "key_fields")

    def __init__(self, info: TableInfo) -> None:
        self.info = info
        self.value = Codec.of(envelope_schema(info))
        self.key = Codec.of(key_schema(info))
        self.fields = tuple(c.field for c in info.columns)
        self.converters = tuple(CONVERTERS[c.kind] for c in info.columns)
        self.key_positions = tuple(i for i, c in enumerate(info.columns) if c.is_key)
        self.key_fields = tuple(info.columns[i].field for i in self.key_positions)

    def row(self, values: tuple, toast: list[str] | None = None) -> dict[str, Any]:
        """Tuple data -> Avro row dict. Unchanged TOAST values become None and are listed."""
        out: dict[str, Any] = {}
        for field, conv, raw in zip(self.fields, self.converters, values):
            if raw is None:
                out[field] = None
            elif raw is UNCHANGED_TOAST:
                out[field] = None
                if toast is None:
                    raise DecodeError(
                        f"{self.info.qualified}.{field}: unchanged-TOAST marker outside an update")
                toast.append(field)
            elif type(raw) is bytes:
                out[field] = conv(raw)
            else:
                raise DecodeError(
                    f"{self.info.qualified}.{field}: binary column value; the source streams text")
        return out

    def key_record(self, row: dict[str, Any]) -> bytes:
        info = self.info
        return self.key.encode({"schema": info.schema, "table": info.table,
                                "key": {f: row[f] for f in self.key_fields}})


class EventBuilder:
    """Feeds on decoded pgoutput messages of one site, returns the records to publish."""

    def __init__(self, site: SiteIdentity, lookup: TypeLookup | None = None,
                 on_new_schema: Callable[[Codec], None] | None = None) -> None:
        self.site = site
        self.relations = RelationCache(lookup)
        self._codecs: dict[int, _TableCodec] = {}
        self._on_new_schema = on_new_schema
        self._begin = Codec.of(control_schema("begin"))
        self._commit = Codec.of(control_schema("commit"))
        self._announced: set[int] = set()
        self._xid = 0
        self._commit_lsn = 0
        self._commit_ts = 0
        self._seq = 0
        self._source: dict[str, Any] | None = None
        self._emit_control_schemas()

    # -- schemas ---------------------------------------------------------------------------
    def _announce(self, codec: Codec) -> None:
        if codec.fingerprint not in self._announced:
            self._announced.add(codec.fingerprint)
            if self._on_new_schema is not None:
                self._on_new_schema(codec)

    def _emit_control_schemas(self) -> None:
        self._announce(self._begin)
        self._announce(self._commit)

    def _codec(self, oid: int) -> _TableCodec:
        codec = self._codecs.get(oid)
        if codec is None:
            info = self.relations.get(oid)
            codec = _TableCodec(info)
            self._announce(codec.value)
            self._announce(codec.key)
            self._codecs[oid] = codec
        return codec

    # -- messages ----------------------------------------------------------------------------
    @property
    def in_transaction(self) -> bool:
        return self._source is not None

    def handle(self, msg: object, lsn: int = 0) -> list[Record]:
        """The records one message yields (often one; none for Relation, Origin, Type)."""
        kind = type(msg)
        if kind is Insert:
            return self._insert(msg)  # type: ignore[arg-type]
        if kind is Update:
            return self._update(msg)  # type: ignore[arg-type]
        if kind is Delete:
            return self._delete(msg)  # type: ignore[arg-type]
        if kind is Begin:
            return self._begin_tx(msg)  # type: ignore[arg-type]
        if kind is Commit:
            return self._commit_tx(msg)  # type: ignore[arg-type]
        if kind is Relation:
            self.relations.update(msg)  # type: ignore[arg-type]
            self._codecs.pop(msg.oid, None)  # type: ignore[attr-defined]
            return []
        if kind is Truncate:
            return self._truncate(msg)  # type: ignore[arg-type]
        if kind is Message:
            return []  # logical messages carry no row changes (TimescaleDB markers: cdc.timescale)
        return []  # Origin, Type: nothing to publish

    def _begin_tx(self, msg: Begin) -> list[Record]:
        if self._source is not None:
            raise DecodeError(f"Begin of xid {msg.xid} inside transaction xid {self._xid}")
        self._xid, self._commit_lsn, self._seq = msg.xid, msg.final_lsn, 0
        self._commit_ts = pg_us_to_unix_us(msg.commit_ts)
        site = self.site
        self._source = {"site": site.site_id, "db": site.database, "schema": "", "table": "",
                        "xid": msg.xid, "commit_lsn": msg.final_lsn, "seq": 0,
                        "commit_ts": self._commit_ts, "snapshot": False}
        return [(CONTROL_KEY, self._begin.encode({
            "site": site.site_id, "system_id": site.system_id, "timeline": site.timeline,
            "slot": site.slot, "db": site.database, "xid": msg.xid,
            "commit_lsn": msg.final_lsn, "commit_ts": self._commit_ts}))]

    def _commit_tx(self, msg: Commit) -> list[Record]:
        if self._source is None:
            raise DecodeError(f"Commit at {msg.commit_lsn:X} outside a transaction")
        self._source = None
        return [(CONTROL_KEY, self._commit.encode({
            "site": self.site.site_id, "xid": self._xid, "commit_lsn": msg.commit_lsn,
            "end_lsn": msg.end_lsn, "commit_ts": self._commit_ts, "changes": self._seq}))]

    def _src(self, info: TableInfo) -> dict[str, Any]:
        base = self._source
        if base is None:
            raise SchemaError(f"{info.qualified}: change outside a transaction")
        src = dict(base)
        src["schema"] = info.schema
        src["table"] = info.table
        src["seq"] = self._seq
        self._seq += 1
        return src

    def _insert(self, msg: Insert) -> list[Record]:
        codec = self._codec(msg.relation_oid)
        after = codec.row(msg.new)
        value = codec.value.encode({"before": None, "after": after, "op": "c",
                                    "source": self._src(codec.info), "unchanged_toast": []})
        return [(codec.key_record(after), value)]

    def _update(self, msg: Update) -> list[Record]:
        codec = self._codec(msg.relation_oid)
        toast: list[str] = []
        after = codec.row(msg.new, toast)
        before = codec.row(msg.old) if msg.old is not None else None
        key = codec.key_record(after)
        value = codec.value.encode({"before": before, "after": after, "op": "u",
                                    "source": self._src(codec.info), "unchanged_toast": toast})
        records: list[Record] = [(key, value)]
        if before is not None:
            old_key = codec.key_record(before)
            if old_key != key:
                records.append((old_key, None))  # the old identity is gone: compaction forgets it
        return records

    def _delete(self, msg: Delete) -> list[Record]:
        codec = self._codec(msg.relation_oid)
        before = codec.row(msg.old)
        key = codec.key_record(before)
        value = codec.value.encode({"before": before, "after": None, "op": "d",
                                    "source": self._src(codec.info), "unchanged_toast": []})
        return [(key, value), (key, None)]

    def _truncate(self, msg: Truncate) -> list[Record]:
        records: list[Record] = []
        for oid in msg.relation_oids:
            codec = self._codec(oid)
            info = codec.info
            key = codec.key.encode({"schema": info.schema, "table": info.table, "key": None})
            records.append((key, codec.value.encode({
                "before": None, "after": None, "op": "t", "source": self._src(info),
                "unchanged_toast": []})))
        return records


def build_all(builder: EventBuilder, messages: Iterable[object]) -> list[Record]:
    """Every record a sequence of messages yields (tests and tools)."""
    out: list[Record] = []
    for msg in messages:
        out.extend(builder.handle(msg))
    return out
