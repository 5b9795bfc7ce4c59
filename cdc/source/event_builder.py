"""pgoutput messages -> encoded Kafka records (key, value) of change events.

Pure: the outside facts come through the catalog lookups passed in (SQL names of non-built-in
types, primary keys, columns' attnums). It does no I/O of its own: a schema it has not announced
yet comes out as a :class:`PublishSchema` ahead of the first records that use it, and the
daemon publishes it, and waits for Kafka to hold it, before it produces them.

Per site transaction the stream carries: a Begin record, one record per change (a delete is
followed by a tombstone for its key; an update that changes the key is followed by a tombstone
for the old key, except in a table without a key, where an equal row may remain), and a Commit
record that counts the changes. The Commit's ``end_lsn`` is what the source may confirm to the
slot once every record up to it is acknowledged. Each Begin links to the transaction before it
in this session (its end LSN; the session's start for the first), so the sink can tell a
transaction that never arrived whole from a restart.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Union

from cachetools import LRUCache

from cdc.core.wire.avro import Codec, control_schema, envelope_schema, key_schema
from cdc.core.wire.row_encoder import BRANCH1, NULL, OP_BYTES, RowEncoder, text, toast_array, zigzag
from cdc.core.errors import DecodeError
from cdc.core.wire.model import CONTROL_KEY, POSITION_KEY, UNCHANGED_TOAST, Record, TableInfo
from cdc.source.enum_labels import enum_checks, unknown_label
from cdc.source.pgoutput import (Begin, Commit, Delete, Insert, Message, Relation,
                          Truncate, Update, pg_us_to_unix_us)
from cdc.runtime.registry import Framing, SelfContained
from cdc.source.relations import ColumnLookup, KeyLookup, RelationCache
from cdc.source.timescale import ChunkRange, ChunkTruncate, Hypertable
from cdc.core.types.integers import INT, LONG
from cdc.core.types.mapping import TypeLookup
from cdc.core.types.temporal import DATE, TIMESTAMP, TIMESTAMPTZ

log = logging.getLogger(__name__)


#: table versions whose codecs are kept beyond the relations that use them now: a schema
#: change, or a chunk described again, finds its version without rebuilding it; an evicted one
#: is rebuilt equal (same schema, same fingerprint) and announced again
VERSIONS_KEPT = 256
#: schema fingerprints known to be published; one evicted is published again (idempotent)
ANNOUNCED_KEPT = 1024


@dataclass(frozen=True, slots=True)
class PublishSchema:
    """What the builder needs done before the records after it: publish this schema."""

    codec: Codec


Output = Union[Record, PublishSchema]
"""What the builder returns: records, each preceded by the schemas it needs published."""


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

    __slots__ = ("info", "value", "key", "rows", "key_prefix", "name_bytes", "enums")

    def __init__(self, info: TableInfo, framing: Framing) -> None:
        self.info = info
        self.value = framing.codec(envelope_schema(info, framing.stable_names))
        self.key = framing.codec(key_schema(info, framing.stable_names))
        self.rows = RowEncoder([c.kind for c in info.columns], [c.field for c in info.columns],
                               [i for i, c in enumerate(info.columns) if c.is_key],
                               info.qualified, info.nullable_key)
        self.name_bytes = text(info.schema) + text(info.table)
        self.key_prefix = self.key.header + self.name_bytes
        self.enums = enum_checks(info)


UnchangedLookup = Callable[[TableInfo, dict[str, bytes], list[str]],
                           "dict[str, bytes | None] | None"]
"""(table, key column -> text value, columns wanted) -> each wanted column's text (None:
NULL) in the site's row at that key now, or None when no row has that key."""


class EventBuilder:
    """Feeds on decoded pgoutput messages of one site, returns the records to publish."""

    def __init__(self, site: SiteIdentity, lookup: TypeLookup | None = None,
                 key_lookup: KeyLookup | None = None,
                 column_lookup: ColumnLookup | None = None,
                 framing: Framing | None = None,
                 hypertable_of: Callable[[int], Hypertable | None] | None = None,
                 start_lsn: int = 0, slot_created: bool = False,
                 unchanged_lookup: "UnchangedLookup | None" = None) -> None:
        self.site = site
        self._unchanged_lookup = unchanged_lookup
        self._framing: Framing = framing or SelfContained()
        self.relations = RelationCache(lookup, key_lookup, column_lookup, hypertable_of)
        # relation OID -> its current version's codec: as many as the relation cache holds
        self._codecs: dict[int, _TableCodec] = {}
        self._by_info: LRUCache[TableInfo, _TableCodec] = LRUCache(VERSIONS_KEPT)
        self._due: list[Output] = []  # schemas to publish ahead of the next records
        self._begin = self._framing.codec(control_schema("begin"))
        self._commit = self._framing.codec(control_schema("commit"))
        self._position = self._framing.codec(control_schema("position"))
        self._announced: LRUCache[int, bool] = LRUCache(ANNOUNCED_KEPT)  # fingerprints
        self._refreshed: set[tuple[int, bytes]] = set()  # (relation OID, enum label) re-read
        self._xid = 0
        self._commit_ts = 0
        self._seq = 0
        self._open = False
        # the link each Begin carries: end LSN of the transaction before it in this session
        self._prev_end = start_lsn
        self._session_first = True
        self._slot_created = slot_created  # the session streams a slot from its creation
        self._tx_prefix = b""  # Avro of source.site + source.db
        self._tx_middle = b""  # Avro of source.xid + source.commit_lsn
        self._tx_suffix = b""  # Avro of source.commit_ts + source.snapshot
        self._emit_control_schemas()

    # -- schemas ---------------------------------------------------------------------------
    def _announce(self, codec: Codec) -> None:
        if self._announced.get(codec.fingerprint) is None:  # get: a hit counts as a use
            self._due.append(PublishSchema(codec))
            self._announced[codec.fingerprint] = True

    def _with_due(self, records: list[Output]) -> list[Output]:
        """The schemas due, ahead of the records (kept while there are none to go with)."""
        if not records:
            return records
        out, self._due = self._due, []
        out.extend(records)
        return out

    def _emit_control_schemas(self) -> None:
        self._announce(self._begin)
        self._announce(self._commit)
        self._announce(self._position)

    def forget(self, oids: set[int]) -> None:
        """Relations the site dropped, once the stream is past their drop (cdc.source.dropped)."""
        self.relations.forget(oids)
        for oid in oids:
            self._codecs.pop(oid, None)
        self._refreshed = {r for r in self._refreshed if r[0] not in oids}

    def position(self, server_lsn: int, at_us: int) -> list[Output]:
        """A Position record (between transactions): the site server's WAL position."""
        if self._open:
            raise DecodeError("a Position record inside a transaction")
        records: list[Output] = [(POSITION_KEY, self._position.encode(
            {"site": self.site.site_id, "server_lsn": server_lsn, "at": at_us}))]
        return self._with_due(records) if self._due else records

    def _codec(self, oid: int) -> _TableCodec:
        codec = self._codecs.get(oid)
        if codec is None:
            info = self.relations.get(oid)
            codec = self._by_info.get(info)
            if codec is None:  # a table version not seen before (Relation messages repeat)
                codec = self._by_info[info] = _TableCodec(info, self._framing)
                self._announce(codec.value)
                self._announce(codec.key)
            self._codecs[oid] = codec
        return codec

    # -- messages ----------------------------------------------------------------------------
    @property
    def in_transaction(self) -> bool:
        return self._open

    def handle(self, msg: object, lsn: int = 0) -> list[Output]:
        """The records one message yields (often one; none for Relation, Origin, Type), each
        preceded by the schemas it needs published."""
        records = self._records(msg)
        return self._with_due(records) if self._due else records

    def _records(self, msg: object) -> list[Output]:
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
        if kind is ChunkTruncate:
            return self._truncate(msg.truncate, msg.ranges)  # type: ignore[attr-defined]
        if kind is Message:
            return []  # logical messages carry no row changes (TimescaleDB markers: cdc.source.timescale)
        return []  # Origin, Type: nothing to publish

    def _begin_tx(self, msg: Begin) -> list[Output]:
        if self._open:
            raise DecodeError(f"Begin of xid {msg.xid} inside transaction xid {self._xid}")
        self._xid, self._seq = msg.xid, 0
        self._commit_ts = pg_us_to_unix_us(msg.commit_ts)
        site = self.site
        self._open = True
        self._tx_prefix = text(site.site_id) + text(site.database)
        self._tx_middle = zigzag(msg.xid) + zigzag(msg.final_lsn)
        self._tx_suffix = zigzag(self._commit_ts) + b"\x00"  # snapshot: false
        return [(CONTROL_KEY, self._begin.encode({
            "site": site.site_id, "system_id": site.system_id, "timeline": site.timeline,
            "slot": site.slot, "db": site.database, "xid": msg.xid,
            "commit_lsn": msg.final_lsn, "commit_ts": self._commit_ts,
            "prev_end_lsn": self._prev_end, **self._first_of_session()}))]

    def _first_of_session(self) -> dict[str, bool]:
        first, self._session_first = self._session_first, False
        return {"session_first": first, "slot_created": first and self._slot_created}

    def _commit_tx(self, msg: Commit) -> list[Output]:
        if not self._open:
            raise DecodeError(f"Commit at {msg.commit_lsn:X} outside a transaction")
        self._open = False
        self._prev_end = msg.end_lsn
        return [(CONTROL_KEY, self._commit.encode({
            "site": self.site.site_id, "xid": self._xid, "commit_lsn": msg.commit_lsn,
            "end_lsn": msg.end_lsn, "commit_ts": self._commit_ts, "changes": self._seq}))]

    def _envelope(self, codec: _TableCodec, before: bytes | None, after: bytes | None,
                  op: str, toast: list[str] | None = None) -> bytes:
        """The value record; ``before``/``after`` are encoded rows or None."""
        if not self._open:
            raise DecodeError(f"{codec.info.qualified}: change outside a transaction")
        seq = self._seq
        self._seq = seq + 1
        return b"".join((
            codec.value.header,
            NULL if before is None else BRANCH1 + before,
            NULL if after is None else BRANCH1 + after,
            OP_BYTES[op],
            self._tx_prefix, codec.name_bytes, self._tx_middle, zigzag(seq), self._tx_suffix,
            toast_array(toast) if toast else NULL,
        ))

    def _checked_codec(self, oid: int, *tuples: tuple | None) -> _TableCodec:
        """The table's codec, re-described first if a value is an enum label it lacks."""
        codec = self._codec(oid)
        if codec.enums:
            for values in tuples:
                label = unknown_label(codec.enums, values)
                if label is not None and (oid, label) not in self._refreshed:
                    self._refreshed.add((oid, label))  # once: a label still unknown goes as is
                    self.relations.refresh(oid)
                    del self._codecs[oid]
                    log.info("enum label not in the table's schema: re-read the catalog",
                             extra={"table": codec.info.qualified, "label": label.decode()})
                    return self._checked_codec(oid, *tuples)
        return codec

    def _insert(self, msg: Insert) -> list[Output]:
        codec = self._checked_codec(msg.relation_oid, msg.new)
        row, key = codec.rows.row_key(msg.new, None)
        return [(codec.key_prefix + BRANCH1 + key, self._envelope(codec, None, row, "c"))]

    def _update(self, msg: Update) -> list[Output]:
        codec = self._checked_codec(msg.relation_oid, msg.new, msg.old)
        toast: list[str] = []
        after, key = codec.rows.row_key(msg.new, toast)
        old = msg.old
        before = old_key = None
        if old is not None:
            before, old_key = codec.rows.row_key(old, None)
            if toast and old_key != key and not codec.info.nullable_key:
                filled = self._fill_unchanged(codec.info, msg.new)
                if filled is not None:
                    toast = []
                    after, key = codec.rows.row_key(filled, toast)
            old_key = codec.key_prefix + BRANCH1 + old_key
        key = codec.key_prefix + BRANCH1 + key
        records: list[Output] = [(key, self._envelope(codec, before, after, "u", toast))]
        if old_key is not None and old_key != key and not codec.info.nullable_key:
            records.append((old_key, None))  # the old identity is gone: compaction forgets it
        return records

    def _fill_unchanged(self, info: TableInfo, new: tuple) -> tuple | None:
        """A key move that left TOAST values unchanged carries no value for them; the cloud may
        not hold the row at its old key (a resumed initial copy had not reached it, and reads
        nothing below its position), so the move alone could not make the row whole. The
        values are read from the site's row at the new key, as it is now (later changes
        follow in the stream); None when it is gone."""
        if self._unchanged_lookup is None:
            return None
        key = {c.name: v for c, v in zip(info.columns, new) if c.is_key}
        wanted = [c.name for c, v in zip(info.columns, new) if v is UNCHANGED_TOAST]
        found = self._unchanged_lookup(info, key, wanted)
        if found is None:
            return None
        return tuple(found[c.name] if v is UNCHANGED_TOAST else v
                     for c, v in zip(info.columns, new))

    def _delete(self, msg: Delete) -> list[Output]:
        codec = self._checked_codec(msg.relation_oid, msg.old)
        before, key = codec.rows.row_key(msg.old, None)
        key = codec.key_prefix + BRANCH1 + key
        if codec.info.nullable_key:  # a keyless table: an equal row may remain under this key
            return [(key, self._envelope(codec, before, None, "d"))]
        return [(key, self._envelope(codec, before, None, "d")), (key, None)]

    def snapshot_row(self, oid: int, values: tuple) -> list[Output]:
        """A row read by a snapshot, as an ``r`` event (source.snapshot true) in the open
        transaction: the one that carries the snapshot chunk's marker (cdc.source.snapshot)."""
        codec = self._checked_codec(oid, values)
        row, key = codec.rows.row_key(values, None)
        suffix = self._tx_suffix
        self._tx_suffix = suffix[:-1] + b"\x01"  # snapshot: true
        try:
            value = self._envelope(codec, None, row, "r")
        finally:
            self._tx_suffix = suffix
        records: list[Output] = [(codec.key_prefix + BRANCH1 + key, value)]
        return self._with_due(records) if self._due else records

    def _truncate(self, msg: Truncate,
                  ranges: dict[int, ChunkRange] | None = None) -> list[Output]:
        """A ``t`` event per table. A TimescaleDB chunk's carries the chunk's time range: a
        ``before`` row holding only the start and an ``after`` row holding only the end (both
        absent on an unbounded side); the sink removes the site's rows in [start, end)."""
        records: list[Output] = []
        for oid in msg.relation_oids:
            codec = self._codec(oid)
            key = codec.key_prefix + NULL
            chunk = ranges.get(oid) if ranges else None
            before = after = None
            if chunk is not None:
                before = _bound_row(codec.info, chunk.column, chunk.start)
                after = _bound_row(codec.info, chunk.column, chunk.end)
            records.append((key, self._envelope(codec, before, after, "t")))
        return records


#: TimescaleDB's internal time (Unix microseconds for these kinds) -> the Avro value
_INTERNAL_TIME = {TIMESTAMPTZ: lambda v: v, TIMESTAMP: lambda v: v,
                  DATE: lambda v: v // 86_400_000_000, INT: lambda v: v, LONG: lambda v: v}


def _bound_row(info: TableInfo, column: str, bound: int | None) -> bytes | None:
    """A row whose only value is ``bound`` in ``column`` (a chunk range's side), or None."""
    if bound is None:
        return None
    parts = []
    found = False
    for col in info.columns:
        if col.name == column and col.kind in _INTERNAL_TIME:
            parts.append(BRANCH1 + zigzag(_INTERNAL_TIME[col.kind](bound)))
            found = True
        else:
            parts.append(NULL)
    if not found:
        raise DecodeError(f"{info.qualified}.{column}: a chunk's time column of a type the "
                          "source cannot bound a TRUNCATE by")
    return b"".join(parts)

