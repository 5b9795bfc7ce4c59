"""TimescaleDB sites: chunk changes become changes of their hypertable; compression is not data.

A hypertable's rows live in chunk tables (``_timescaledb_internal._hyper_<h>_<n>_chunk``), so
pgoutput reports every insert, update and delete as a change of a chunk. Compressing a chunk
writes its rows into a ``compress_hyper_*`` chunk, and changes to compressed rows decompress them
first; those writes are bracketed by logical messages ``::timescaledb-compression-start/-end``
and ``::timescaledb-decompression-start/-end`` (docs/design.md), and none of them is a change of the
data. This filter sits between the decoder and the event builder:

- a Relation of a chunk is renamed to its hypertable (and remembered by OID); one of a chunk of
  an internal hypertable (compressed storage) or of TimescaleDB's catalog is dropped;
- every change between a ``-start`` marker and its ``-end`` marker is dropped, deletes included,
  and so are the markers; changes of dropped relations are dropped;
- a TRUNCATE of a chunk concerns that chunk's rows only: it leaves as a
  :class:`ChunkTruncate` with the chunk's time range (the event builder puts the range in the
  truncate event, the sink deletes only the site's rows in it); a chunk whose range cannot be
  told (dropped since, or split by a space dimension too) is left out, with a warning: the
  cloud keeps those rows, as it keeps the rows of chunks dropped by retention;
- everything else passes unchanged.

Pure: the chunk -> hypertable map comes in through a lookup (the site catalog, or a recorded
``catalog.json`` in tests). What it remembers per relation OID is protocol state, like the
relation cache (a chunk's Relation message comes once per session): chunks leave it when the
site dropped them and the stream is past the drop (:meth:`TimescaleFilter.forget`,
:mod:`cdc.source.dropped`), so it holds at most the chunks that exist.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from typing import Callable

from cdc.source.pgoutput import Begin, Delete, Insert, Message, Relation, Truncate, Update

log = logging.getLogger(__name__)

#: schemas whose tables are TimescaleDB's own, never data of the site
INTERNAL_SCHEMAS = frozenset({
    "_timescaledb_internal", "_timescaledb_catalog", "_timescaledb_config", "_timescaledb_cache",
    "_timescaledb_functions", "_timescaledb_debug", "timescaledb_information",
    "timescaledb_experimental"})
CHUNK_SCHEMA = "_timescaledb_internal"
_MARKER = re.compile(r"::timescaledb-(de)?compression-(start|end)\Z")
_CHUNK_NAME = re.compile(r"_hyper_(\d+)_\d+_chunk\Z")


@dataclass(frozen=True, slots=True)
class Hypertable:
    """The hypertable a chunk belongs to (``relid``: its OID, when known), with its time
    dimension (column and chunk interval, microseconds for time types) for the cloud."""

    schema: str
    table: str
    relid: int | None = None
    time_column: str | None = None
    chunk_interval: int | None = None

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass(frozen=True, slots=True)
class ChunkRange:
    """A chunk's slice of its hypertable's time dimension, in TimescaleDB's internal units
    (Unix microseconds for timestamptz, timestamp and date; the value for integer time);
    None: unbounded on that side. ``space``: the chunk is also a slice of a space (hash)
    dimension, so its time range holds other chunks' rows too."""

    column: str
    start: int | None
    end: int | None
    space: bool = False


@dataclass(frozen=True, slots=True)
class ChunkTruncate:
    """A TRUNCATE that names chunks: ``ranges`` holds each chunk's (by OID) time range."""

    truncate: Truncate
    ranges: dict[int, ChunkRange]


ChunkRangeLookup = Callable[[str, str], "ChunkRange | None"]
"""(chunk schema, chunk table) -> its time range, or None when the catalog no longer has it."""

ChunkLookup = Callable[[str, str], "Hypertable | None"]
"""(chunk schema, chunk table) -> its hypertable, or None when it is not a chunk the catalog
knows. An internal hypertable (compressed storage) is returned as it is; the filter drops it."""


def chunk_hypertable_id(table: str) -> int | None:
    """The hypertable id in a chunk's name (``_hyper_7_15_chunk`` -> 7), if it has one."""
    m = _CHUNK_NAME.match(table)
    return int(m.group(1)) if m else None


class TimescaleFilter:
    """Feeds on decoded messages in stream order; returns the message to pass on, or None."""

    def __init__(self, lookup: ChunkLookup,
                 selected: Callable[[str], bool] = lambda name: True,
                 ranges: ChunkRangeLookup = lambda schema, table: None) -> None:
        self._lookup = lookup
        self._ranges = ranges
        self._chunk_names: dict[int, tuple[str, str]] = {}  # chunk OID -> its own name
        self._selected = selected
        self._dropped: set[int] = set()  # relation OIDs whose changes are not data
        self._hypertables: dict[int, Hypertable] = {}  # chunk OID -> hypertable
        self._own: dict[int, Hypertable] = {}  # hypertable OID -> itself (snapshots)
        self._open: set[str] = set()  # markers started and not yet ended in this transaction
        self.dropped_changes = 0

    def hypertable_of(self, oid: int) -> Hypertable | None:
        """The hypertable behind a chunk's relation OID, or of a hypertable's own OID that a
        snapshot described (:meth:`remember`); None for any other relation."""
        return self._hypertables.get(oid) or self._own.get(oid)

    def remember(self, oid: int, hypertable: Hypertable | None) -> None:
        """A snapshot reads a hypertable itself: its events carry the same facts as its chunks'."""
        if hypertable is not None:
            self._own[oid] = hypertable

    def oids(self) -> set[int]:
        """Every relation OID the filter remembers something of."""
        return (self._dropped | self._hypertables.keys() | self._chunk_names.keys()
                | self._own.keys())

    def forget(self, oids: set[int]) -> None:
        """Relations the site dropped (chunks gone by retention or decompression), once the
        stream is past their drop."""
        self._dropped -= oids
        for oid in oids:
            self._hypertables.pop(oid, None)
            self._chunk_names.pop(oid, None)
            self._own.pop(oid, None)

    def __call__(self, msg: object) -> object | None:
        kind = type(msg)
        if kind is Insert or kind is Update or kind is Delete:
            if self._open or msg.relation_oid in self._dropped:  # type: ignore[attr-defined]
                self.dropped_changes += 1
                return None
            return msg
        if kind is Relation:
            return self._relation(msg)  # type: ignore[arg-type]
        if kind is Message:
            m = _MARKER.match(msg.prefix)  # type: ignore[attr-defined]
            if m is None:
                return msg
            what = f"{m.group(1) or ''}compression"
            if m.group(2) == "start":
                self._open.add(what)
            else:
                self._open.discard(what)
            return None
        if kind is Truncate:
            if self._open:  # TimescaleDB's own truncate of a chunk it (de)compresses
                self.dropped_changes += 1
                return None
            return self._truncate(msg)  # type: ignore[arg-type]
        if kind is Begin:
            self._open.clear()  # markers never span transactions
        return msg

    def _truncate(self, msg: Truncate) -> Truncate | ChunkTruncate | None:
        """Dropped relations left out; each chunk with its time range, or left out when the
        range cannot be told (the cloud keeps its rows rather than lose a neighbour's)."""
        oids: list[int] = []
        ranges: dict[int, ChunkRange] = {}
        for oid in msg.relation_oids:
            if oid in self._dropped:
                continue
            if oid in self._hypertables:
                schema, table = self._chunk_names[oid]
                found = self._ranges(schema, table)
                if found is None or found.space:
                    log.warning("TRUNCATE of a chunk whose time range cannot be told (dropped "
                                "since, or a space-partitioned hypertable): the cloud keeps "
                                "its rows", extra={"chunk": f"{schema}.{table}",
                                                   "hypertable": self._hypertables[oid].qualified})
                    continue
                ranges[oid] = found
            oids.append(oid)
        if not oids:
            return None
        if len(oids) != len(msg.relation_oids):
            msg = replace(msg, relation_oids=tuple(oids))
        return ChunkTruncate(msg, ranges) if ranges else msg

    def _relation(self, rel: Relation) -> Relation | None:
        self._dropped.discard(rel.oid)
        self._hypertables.pop(rel.oid, None)
        self._chunk_names.pop(rel.oid, None)
        if rel.namespace not in INTERNAL_SCHEMAS:
            return rel
        hypertable = self._lookup(rel.namespace, rel.name) if rel.namespace == CHUNK_SCHEMA \
            else None
        if hypertable is None or hypertable.schema in INTERNAL_SCHEMAS \
                or not self._selected(hypertable.qualified):
            if hypertable is None and rel.namespace == CHUNK_SCHEMA \
                    and not rel.name.startswith("compress_"):
                log.warning("changes of a chunk no hypertable claims are dropped",
                            extra={"chunk": f"{rel.namespace}.{rel.name}"})
            self._dropped.add(rel.oid)
            return None
        self._hypertables[rel.oid] = hypertable
        self._chunk_names[rel.oid] = (rel.namespace, rel.name)
        return replace(rel, namespace=hypertable.schema, name=hypertable.table)
