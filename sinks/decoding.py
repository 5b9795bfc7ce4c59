"""Change envelopes from Avro bytes, fast: the sink's hot path.

fastavro's reader spends ~11 µs on one envelope, half of the sink's time. Envelopes whose row
columns all have the Avro types the source writes (:func:`cdc.core.types.mapping.avro_type`) are read here by
a decoder built once per table version; any other writer schema is read by fastavro. Logical
values (decimals, dates, times, timestamps, bytes) become the PostgreSQL text the cloud's COPY
reads, on either path. Both give the same :class:`~sinks.changes.Change` (a property test checks
them against each other).

Pure: bytes in, values out.
"""

from __future__ import annotations

import io
import re
import struct
from typing import Any

from cachetools import FIFOCache
from fastavro import parse_schema, schemaless_reader

from cdc.core.wire.avro import OPS, Codec, without_logical_types
from cdc.core.errors import SchemaError
from cdc.core.types.kind import (READ_BOOLEAN, READ_BYTES, READ_DOUBLE, READ_FLOAT, READ_LONG,
                                 READ_STRING, Kind)
from cdc.core.types.mapping import kind_of_avro_type, text_converter
from sinks.changes import Change, TableVersion

#: how the typed branch of each reader (:attr:`Kind.reader`) is read, as lines setting c{i}
_READS = {
    READ_BYTES: ["n, pos = _long(buf, pos)", "c{i} = buf[pos:pos + n]", "pos += n"],
    READ_STRING: ["n = buf[pos]", "if n < 0x80:", "    n >>= 1", "    pos += 1",
                  "else:", "    n, pos = _long(buf, pos)",
                  "c{i} = buf[pos:pos + n].decode()", "pos += n"],
    READ_LONG: ["c{i}, pos = _long(buf, pos)"],
    READ_DOUBLE: ["c{i} = _D(buf, pos)[0]", "pos += 8"],
    READ_FLOAT: ["c{i} = _F(buf, pos)[0]", "pos += 4"],
    READ_BOOLEAN: ["c{i} = buf[pos] == 1", "pos += 1"],
}
_D = struct.Struct("<d").unpack_from
_F = struct.Struct("<f").unpack_from


#: decoders the sink keeps, by schema fingerprint: one per table version, and versions only
#: accumulate (every schema change of every site table); one evicted is built again, equal
DECODERS_KEPT = 512

_OP_BY_BYTE = {2 * i: op for i, op in enumerate(OPS)}
_FOUR_LONGS = re.compile(rb"(?:[\x80-\xff]*[\x00-\x7f]){4}", re.DOTALL).match


def _long(buf: bytes, pos: int) -> tuple[int, int]:
    b = buf[pos]
    if b < 0x80:
        return (b >> 1) ^ -(b & 1), pos + 1
    n = b & 0x7F
    shift = 7
    pos += 1
    while True:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return (n >> 1) ^ -(n & 1), pos
        shift += 7


def _skip_string(buf: bytes, pos: int) -> int:
    n, pos = _long(buf, pos)
    return pos + n


def decoder_cache(kept: int = DECODERS_KEPT) -> "FIFOCache[int, EnvelopeDecoder]":
    """Schema fingerprint -> its decoder, the ``kept`` built last.

    First in, first out rather than least recently used: it is read once per record, and an
    LRU's bookkeeping on every hit (cachetools' LRUCache: ~0.6 µs) would cost the sink ~2 %;
    a decoder still in use when ``kept`` newer versions have pushed it out is built once more."""
    return FIFOCache(kept)


class EnvelopeDecoder:
    """Decodes one table version's envelopes into Changes."""

    def __init__(self, codec: Codec, version: TableVersion) -> None:
        self.codec = codec
        self.version = version
        self._header_len = len(codec.header)
        self.fields = tuple(c.field for c in version.columns)
        row = codec.schema["fields"][0]["type"][1]
        found = [kind_of_avro_type(f["type"]) for f in row["fields"]]
        kinds = [k[0] if k is not None and k[1] else None for k in found]
        # logical kinds become PostgreSQL text, the form COPY takes (fallback path included)
        self._to_text = {self.fields[i]: conv for i, k in enumerate(kinds)
                         if k is not None and (conv := text_converter(k)) is not None}
        self._raw = parse_schema(without_logical_types(codec.schema))
        self.fast = all(k is not None for k in kinds) and self._layout_is_ours(codec.schema)
        self._source_prefix = b""
        self._site = ""
        if self.fast:
            self._row = self._compile([k for k in kinds if k is not None])

    def _compile(self, kinds: list[Kind]) -> Any:
        """A straight-line reader of this version's Row record (no per-column loop)."""
        lines = ["def row(buf, pos):"]
        scope: dict[str, Any] = {"_long": _long, "_D": _D, "_F": _F,
                                 "_bad_branch": self._bad_branch}
        for i, kind in enumerate(kinds):
            lines += ["    b = buf[pos]", "    pos += 1",
                      "    if b == 0:", f"        c{i} = None"]
            if kind.special:
                lines += ["    elif b == 4:",
                          "        n, pos = _long(buf, pos)",
                          f"        c{i} = buf[pos:pos + n].decode()", "        pos += n"]
            lines += ["    elif b != 2:", f"        _bad_branch(b, {i})", "    else:"]
            lines += ["        " + line.format(i=i) for line in _READS[kind.reader]]
            conv = self._to_text.get(self.fields[i])
            if conv is not None:
                scope[f"_text{i}"] = conv
                lines += [f"        c{i} = _text{i}(c{i})"]
        pairs = ", ".join(f"{f!r}: c{i}" for i, f in enumerate(self.fields))
        lines.append(f"    return {{{pairs}}}, pos")
        exec("\n".join(lines), scope)  # noqa: S102 - generated from column kinds and field names
        return scope["row"]

    def _bad_branch(self, branch: int, index: int) -> None:
        raise IndexError(f"union branch {branch >> 1} in column {self.fields[index]}")

    def _text(self, row: dict[str, Any] | None) -> dict[str, Any] | None:
        """A row fastavro read raw: logical values to PostgreSQL text, as the fast path does."""
        if row is not None:
            for name, conv in self._to_text.items():
                value = row.get(name)
                if value is not None:
                    row[name] = conv(value)
        return row

    @staticmethod
    def _layout_is_ours(schema: dict[str, Any]) -> bool:
        names = [f["name"] for f in schema["fields"]]
        source = [f["name"] for f in schema["fields"][3]["type"]["fields"]]
        return names == ["before", "after", "op", "source", "unchanged_toast"] and source == [
            "site", "db", "schema", "table", "xid", "commit_lsn", "seq", "commit_ts", "snapshot"]

    def decode(self, data: bytes) -> tuple[Change, str]:
        """(change, site named in its source block)."""
        if not self.fast:
            rec = schemaless_reader(io.BytesIO(data[self._header_len:]), self._raw, None)
            return (Change(self.version, rec["op"], self._text(rec["before"]),
                           self._text(rec["after"]), rec["unchanged_toast"]),
                    rec["source"]["site"])
        try:
            return self._decode(data)
        except (IndexError, KeyError, ValueError, OverflowError, struct.error) as exc:
            raise SchemaError(f"{self.version.qualified}: envelope does not match its schema "
                              f"{self.codec.fingerprint:016x}: {exc}") from exc

    def _decode(self, buf: bytes) -> tuple[Change, str]:
        pos = self._header_len  # single-object or Confluent wire-format header
        before = after = None
        if buf[pos] == 2:
            before, pos = self._row(buf, pos + 1)
        else:
            pos += 1
        if buf[pos] == 2:
            after, pos = self._row(buf, pos + 1)
        else:
            pos += 1
        op = _OP_BY_BYTE[buf[pos]]
        pos += 1
        # source block: site, db, schema and table repeat from record to record
        prefix = self._source_prefix
        if buf.startswith(prefix, pos) and prefix:
            pos += len(prefix)
            site = self._site
        else:
            start = pos
            n, pos = _long(buf, pos)
            site = buf[pos:pos + n].decode()
            pos += n
            for _ in range(3):  # db, schema, table
                pos = _skip_string(buf, pos)
            self._source_prefix, self._site = buf[start:pos], site
        longs = _FOUR_LONGS(buf, pos)  # xid, commit_lsn, seq, commit_ts
        if longs is None:
            raise IndexError("source block cut short")
        pos = longs.end() + 1  # snapshot
        if buf[pos] == 0 and pos + 1 == len(buf):
            return Change(self.version, op, before, after, []), site
        toast: list[str] = []
        while True:
            count, pos = _long(buf, pos)
            if count == 0:
                break
            if count < 0:
                count = -count
                _, pos = _long(buf, pos)  # block size in bytes
            for _ in range(count):
                n, pos = _long(buf, pos)
                toast.append(buf[pos:pos + n].decode())
                pos += n
        if pos != len(buf):
            raise IndexError(f"{len(buf) - pos} bytes left over")
        return Change(self.version, op, before, after, toast), site
