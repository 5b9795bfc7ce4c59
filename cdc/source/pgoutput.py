"""Pure decoder for the PostgreSQL logical replication stream and the ``pgoutput`` plugin.

Two levels:

* frames: the CopyData payloads of a ``START_REPLICATION ... LOGICAL`` stream, :func:`decode_frame`
  (``'w'`` XLogData, ``'k'`` primary keepalive) and :func:`encode_standby_status` (``'r'``);
* messages: the pgoutput protocol version 1 messages carried in XLogData, :func:`decode_message`
  (https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html).

Integers are big-endian. LSNs, xids and OIDs are unsigned; timestamps are signed int64 microseconds
since 2000-01-01 00:00 UTC (the PostgreSQL epoch), kept as they are (see :func:`pg_us_to_unix_us`).
Strings are NUL-terminated UTF-8. A column value of a tuple is ``bytes`` (text format, ``'t'``),
``None`` (SQL NULL, ``'n'``), :data:`UNCHANGED_TOAST` (``'u'``: an out-of-line value the change did
not touch, so the server did not send it) or :class:`BinaryDatum` (``'b'``, binary format).

Anything that does not parse raises :class:`cdc.core.errors.DecodeError` naming the message tag and the
byte offset; this module imports only the standard library and :mod:`cdc.core.errors`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields
from typing import Callable, TypeAlias, Union

from cdc.core.errors import DecodeError
from cdc.core.wire.model import UNCHANGED_TOAST, UnchangedToast

__all__ = [
    "PG_EPOCH_US_OFFSET",
    "pg_us_to_unix_us",
    "XLogData",
    "Keepalive",
    "decode_frame",
    "encode_standby_status",
    "Begin",
    "Commit",
    "Origin",
    "Column",
    "Relation",
    "Type",
    "UnchangedToast",
    "UNCHANGED_TOAST",
    "BinaryDatum",
    "TupleValue",
    "TupleData",
    "Insert",
    "Update",
    "Delete",
    "Truncate",
    "Message",
    "PgoutputMessage",
    "decode_message",
]

#: Microseconds from the Unix epoch (1970-01-01) to the PostgreSQL epoch (2000-01-01), both UTC.
PG_EPOCH_US_OFFSET = 946_684_800 * 1_000_000


def pg_us_to_unix_us(pg_us: int) -> int:
    """Convert microseconds since 2000-01-01 UTC (PostgreSQL) to microseconds since 1970-01-01 UTC."""
    return pg_us + PG_EPOCH_US_OFFSET


# The hot-path classes (XLogData, Insert, Update, Delete) are built by writing their slots
# directly: what a frozen dataclass's __init__ does through object.__setattr__, at half the cost.
_new_object = object.__new__


def _slot_setters(cls: type) -> tuple[Callable[[object, object], None], ...]:
    return tuple(cls.__dict__[f.name].__set__ for f in fields(cls))


# ---------------------------------------------------------------------------------------------
# Frames: CopyData payloads of the replication stream
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class XLogData:
    """``'w'``: WAL data. ``payload`` is one pgoutput message, a zero-copy view into the frame."""

    wal_start: int
    wal_end: int
    send_time: int
    payload: memoryview | bytes


@dataclass(frozen=True, slots=True)
class Keepalive:
    """``'k'``: primary keepalive. ``reply_requested`` asks for a standby status update now."""

    wal_end: int
    send_time: int
    reply_requested: bool


_xlog_header = struct.Struct(">QQq").unpack_from  # after the tag: wal_start, wal_end, send_time
_XLOG_DATA_START = 1 + 24
_keepalive = struct.Struct(">Qq?").unpack_from  # after the tag: wal_end, send_time, reply_requested
_KEEPALIVE_SIZE = 1 + 17
_set_xlog_wal_start, _set_xlog_wal_end, _set_xlog_send_time, _set_xlog_payload = _slot_setters(XLogData)
_STANDBY_STATUS = struct.Struct(">cQQQq?")


def decode_frame(buf: bytes | memoryview) -> XLogData | Keepalive:
    """Decode one CopyData payload (a 1-D byte buffer) of a logical replication stream.

    For XLogData the ``payload`` is a ``memoryview`` slice of ``buf`` (no copy); pass it to
    :func:`decode_message`.
    """
    try:
        tag = buf[0]
    except IndexError:
        raise DecodeError("empty replication frame (no tag byte at byte offset 0)") from None
    if tag == 0x77:  # 'w'
        try:
            wal_start, wal_end, send_time = _xlog_header(buf, 1)
        except struct.error:
            raise DecodeError(
                f"replication frame 'w' (XLogData) truncated: {len(buf)} bytes, the header alone is "
                f"{_XLOG_DATA_START} (byte offset {len(buf)})"
            ) from None
        frame = _new_object(XLogData)
        _set_xlog_wal_start(frame, wal_start)
        _set_xlog_wal_end(frame, wal_end)
        _set_xlog_send_time(frame, send_time)
        _set_xlog_payload(frame, memoryview(buf)[_XLOG_DATA_START:])
        return frame
    if tag == 0x6B:  # 'k'
        size = len(buf)
        if size != _KEEPALIVE_SIZE:
            what = "truncated" if size < _KEEPALIVE_SIZE else f"has {size - _KEEPALIVE_SIZE} leftover bytes"
            raise DecodeError(
                f"replication frame 'k' (keepalive) {what}: {size} bytes, expected {_KEEPALIVE_SIZE} "
                f"(byte offset {min(size, _KEEPALIVE_SIZE)})"
            )
        wal_end, send_time, reply = _keepalive(buf, 1)
        return Keepalive(wal_end, send_time, reply)
    raise DecodeError(f"unknown replication frame tag {_show_tag(tag)} at byte offset 0")


def encode_standby_status(
    write_lsn: int, flush_lsn: int, apply_lsn: int, now_us: int, reply: bool = False
) -> bytes:
    """Build a ``'r'`` standby status update: the LSNs received, flushed and applied, and the
    client clock ``now_us`` in microseconds since 2000-01-01 UTC (PostgreSQL epoch).
    """
    try:
        return _STANDBY_STATUS.pack(b"r", write_lsn, flush_lsn, apply_lsn, now_us, bool(reply))
    except struct.error as exc:
        raise ValueError(
            f"standby status out of range: write={write_lsn!r} flush={flush_lsn!r} "
            f"apply={apply_lsn!r} now_us={now_us!r}: {exc}"
        ) from exc


# ---------------------------------------------------------------------------------------------
# Messages: pgoutput protocol version 1
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Begin:
    """``'B'``: start of a transaction that ends at ``final_lsn``."""

    final_lsn: int
    commit_ts: int
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    """``'C'``: end of a transaction (``flags`` is currently always 0)."""

    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts: int


@dataclass(frozen=True, slots=True)
class Origin:
    """``'O'``: the transaction was replayed from replication origin ``name`` (at ``commit_lsn`` there)."""

    commit_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a :class:`Relation`. ``flags`` bit 1: part of the replica identity (key)."""

    flags: int
    name: str
    type_oid: int
    type_modifier: int  # atttypmod, signed: -1 when the type has none

    @property
    def is_key(self) -> bool:
        return bool(self.flags & 1)


@dataclass(frozen=True, slots=True)
class Relation:
    """``'R'``: the shape of a table, sent before its first change in a session and after it changes.

    ``namespace`` is ``''`` for ``pg_catalog``. ``replica_identity`` is one of ``'d'`` (default:
    primary key), ``'n'`` (nothing), ``'f'`` (full row), ``'i'`` (an index).
    """

    oid: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class Type:
    """``'Y'``: a non-built-in data type used by a column of a following Relation.

    PostgreSQL sends the ``oid`` of the column's type but the namespace and name of its *base*
    type: for a domain over ``integer`` that is ``''`` (pg_catalog) and ``'int4'``.
    """

    oid: int
    namespace: str
    name: str




@dataclass(frozen=True, slots=True)
class BinaryDatum:
    """Column value ``'b'``: a value in the type's binary send format (only with ``binary 'true'``)."""

    data: bytes


TupleValue: TypeAlias = Union[bytes, None, UnchangedToast, BinaryDatum]
#: A row: one value per column of the relation, in column order.
TupleData: TypeAlias = tuple[TupleValue, ...]


@dataclass(frozen=True, slots=True)
class Insert:
    """``'I'``: a new row of ``relation_oid``."""

    relation_oid: int
    new: TupleData


@dataclass(frozen=True, slots=True)
class Update:
    """``'U'``: a changed row. ``old`` is sent only when the key changed (``old_kind == 'K'``: only
    the replica identity columns, the others ``None``) or with REPLICA IDENTITY FULL
    (``old_kind == 'O'``); otherwise ``old`` and ``old_kind`` are ``None``.
    """

    relation_oid: int
    old: TupleData | None
    old_kind: str | None
    new: TupleData


@dataclass(frozen=True, slots=True)
class Delete:
    """``'D'``: a deleted row, identified by its key (``'K'``) or its full old row (``'O'``)."""

    relation_oid: int
    old: TupleData
    old_kind: str


@dataclass(frozen=True, slots=True)
class Truncate:
    """``'T'``: one TRUNCATE statement over one or more relations."""

    relation_oids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class Message:
    """``'M'``: a logical decoding message from ``pg_logical_emit_message`` (needs ``messages 'true'``).

    A non-transactional message is sent outside any Begin/Commit, as soon as it is decoded.
    """

    transactional: bool
    lsn: int
    prefix: str
    content: bytes


PgoutputMessage: TypeAlias = Union[Begin, Commit, Origin, Relation, Type, Insert, Update, Delete, Truncate, Message]

# --- parsing -------------------------------------------------------------------------------


class _Malformed(Exception):
    """Internal: where and why a message does not parse; :func:`decode_message` adds the tag."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(offset, reason)
        self.offset = offset
        self.reason = reason


_TRUNCATED = (IndexError, struct.error)

_u16 = struct.Struct(">H").unpack_from
_u32 = struct.Struct(">I").unpack_from
_u32_u8 = struct.Struct(">IB").unpack_from
_begin = struct.Struct(">QqI").unpack_from
_commit = struct.Struct(">BQQq").unpack_from
_u64 = struct.Struct(">Q").unpack_from
_relation_head = struct.Struct(">BH").unpack_from  # replica identity, number of columns
_column_type = struct.Struct(">Ii").unpack_from  # type oid, type modifier
_truncate_head = struct.Struct(">IB").unpack_from  # number of relations, options
_message_head = struct.Struct(">BQ").unpack_from  # flags, lsn

_K, _O, _NEW = b"KON"  # tuple markers in Insert/Update/Delete


def _show_tag(tag: int) -> str:
    ch = chr(tag)
    return f"{ch!r} (0x{tag:02x})" if ch.isprintable() and tag < 0x80 else f"0x{tag:02x}"


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.find(0, pos)
    if end < 0:
        raise _Malformed(pos, "truncated (string without its NUL terminator)")
    try:
        return buf[pos:end].decode(), end + 1
    except UnicodeDecodeError as exc:
        raise _Malformed(pos + exc.start, f"invalid UTF-8 in string ({exc.reason})") from None


def _tuple(buf: bytes, pos: int) -> tuple[TupleData, int]:
    """TupleData at ``pos``: Int16 column count, then per column a kind byte and maybe a value.

    The hot loop of the decoder: the list starts as all ``None`` so a NULL costs nothing.
    """
    blen = len(buf)
    u32 = _u32
    i = -1
    try:
        (count,) = _u16(buf, pos)
        pos += 2
        values: list[TupleValue] = [None] * count
        for i in range(count):
            kind = buf[pos]
            if kind == 116:  # 't'
                start = pos + 5
                end = start + u32(buf, pos + 1)[0]
                if end > blen:
                    raise _Malformed(pos, f"truncated (column {i}: value of {end - start} bytes, {blen - start} left)")
                values[i] = buf[start:end]
                pos = end
            elif kind == 110:  # 'n'
                pos += 1
            elif kind == 117:  # 'u'
                values[i] = UNCHANGED_TOAST
                pos += 1
            elif kind == 98:  # 'b'
                start = pos + 5
                end = start + u32(buf, pos + 1)[0]
                if end > blen:
                    raise _Malformed(pos, f"truncated (column {i}: value of {end - start} bytes, {blen - start} left)")
                values[i] = BinaryDatum(buf[start:end])
                pos = end
            else:
                raise _Malformed(pos, f"unknown tuple value kind {_show_tag(kind)} in column {i}")
    except _TRUNCATED:
        where = "the tuple's column count" if i < 0 else f"column {i}"
        raise _Malformed(pos, f"truncated (in {where})") from None
    return tuple(values), pos


_set_insert_oid, _set_insert_new = _slot_setters(Insert)
_set_update_oid, _set_update_old, _set_update_old_kind, _set_update_new = _slot_setters(Update)
_set_delete_oid, _set_delete_old, _set_delete_old_kind = _slot_setters(Delete)


def _parse_begin(buf: bytes, pos: int) -> tuple[Begin, int]:
    try:
        final_lsn, commit_ts, xid = _begin(buf, pos)
    except struct.error:
        raise _Malformed(pos, "truncated") from None
    return Begin(final_lsn, commit_ts, xid), pos + 20


def _parse_commit(buf: bytes, pos: int) -> tuple[Commit, int]:
    try:
        flags, commit_lsn, end_lsn, commit_ts = _commit(buf, pos)
    except struct.error:
        raise _Malformed(pos, "truncated") from None
    return Commit(flags, commit_lsn, end_lsn, commit_ts), pos + 25


def _parse_origin(buf: bytes, pos: int) -> tuple[Origin, int]:
    try:
        (commit_lsn,) = _u64(buf, pos)
    except struct.error:
        raise _Malformed(pos, "truncated") from None
    name, pos = _cstring(buf, pos + 8)
    return Origin(commit_lsn, name), pos


def _parse_relation(buf: bytes, pos: int) -> tuple[Relation, int]:
    try:
        (oid,) = _u32(buf, pos)
        namespace, pos = _cstring(buf, pos + 4)
        name, pos = _cstring(buf, pos)
        identity, count = _relation_head(buf, pos)
        pos += 3
        columns = []
        for _ in range(count):
            flags = buf[pos]
            col_name, pos = _cstring(buf, pos + 1)
            type_oid, type_modifier = _column_type(buf, pos)
            pos += 8
            columns.append(Column(flags, col_name, type_oid, type_modifier))
    except _TRUNCATED:
        raise _Malformed(pos, "truncated") from None
    return Relation(oid, namespace, name, chr(identity), tuple(columns)), pos


def _parse_type(buf: bytes, pos: int) -> tuple[Type, int]:
    try:
        (oid,) = _u32(buf, pos)
    except struct.error:
        raise _Malformed(pos, "truncated") from None
    namespace, pos = _cstring(buf, pos + 4)
    name, pos = _cstring(buf, pos)
    return Type(oid, namespace, name), pos


def _parse_insert(buf: bytes, pos: int) -> tuple[Insert, int]:
    try:
        oid, marker = _u32_u8(buf, pos)
    except struct.error:
        raise _Malformed(pos, "truncated") from None
    if marker != _NEW:
        raise _Malformed(pos + 4, f"expected 'N' before the new tuple, got {_show_tag(marker)}")
    new, pos = _tuple(buf, pos + 5)
    msg = _new_object(Insert)
    _set_insert_oid(msg, oid)
    _set_insert_new(msg, new)
    return msg, pos


def _parse_update(buf: bytes, pos: int) -> tuple[Update, int]:
    try:
        oid, marker = _u32_u8(buf, pos)
    except struct.error:
        raise _Malformed(pos, "truncated") from None
    pos += 4
    if marker == _NEW:
        old = old_kind = None
    elif marker == _K or marker == _O:
        old_kind = "K" if marker == _K else "O"
        old, pos = _tuple(buf, pos + 1)
        if pos >= len(buf):
            raise _Malformed(pos, "truncated (no new tuple after the old one)")
        marker = buf[pos]
        if marker != _NEW:
            raise _Malformed(pos, f"expected 'N' before the new tuple, got {_show_tag(marker)}")
    else:
        raise _Malformed(pos, f"expected 'K', 'O' or 'N' after the relation OID, got {_show_tag(marker)}")
    new, pos = _tuple(buf, pos + 1)
    msg = _new_object(Update)
    _set_update_oid(msg, oid)
    _set_update_old(msg, old)
    _set_update_old_kind(msg, old_kind)
    _set_update_new(msg, new)
    return msg, pos


def _parse_delete(buf: bytes, pos: int) -> tuple[Delete, int]:
    try:
        oid, marker = _u32_u8(buf, pos)
    except struct.error:
        raise _Malformed(pos, "truncated") from None
    if marker == _K:
        old_kind = "K"
    elif marker == _O:
        old_kind = "O"
    else:
        raise _Malformed(pos + 4, f"expected 'K' or 'O' after the relation OID, got {_show_tag(marker)}")
    old, pos = _tuple(buf, pos + 5)
    msg = _new_object(Delete)
    _set_delete_oid(msg, oid)
    _set_delete_old(msg, old)
    _set_delete_old_kind(msg, old_kind)
    return msg, pos


def _parse_truncate(buf: bytes, pos: int) -> tuple[Truncate, int]:
    try:
        count, options = _truncate_head(buf, pos)
    except struct.error:
        raise _Malformed(pos, "truncated") from None
    pos += 5
    end = pos + 4 * count
    if end > len(buf):
        raise _Malformed(pos, f"truncated ({count} relation OIDs need {4 * count} bytes, {len(buf) - pos} left)")
    oids = struct.unpack_from(f">{count}I", buf, pos)
    return Truncate(oids, bool(options & 1), bool(options & 2)), end


def _parse_message(buf: bytes, pos: int) -> tuple[Message, int]:
    try:
        flags, lsn = _message_head(buf, pos)
    except struct.error:
        raise _Malformed(pos, "truncated") from None
    prefix, pos = _cstring(buf, pos + 9)
    try:
        (size,) = _u32(buf, pos)
    except struct.error:
        raise _Malformed(pos, "truncated") from None
    start = pos + 4
    end = start + size
    if end > len(buf):
        raise _Malformed(pos, f"truncated (content of {size} bytes, {len(buf) - start} left)")
    return Message(bool(flags & 1), lsn, prefix, buf[start:end]), end


_PARSERS: dict[int, Callable[[bytes, int], tuple[PgoutputMessage, int]]] = {
    ord("B"): _parse_begin,
    ord("C"): _parse_commit,
    ord("O"): _parse_origin,
    ord("R"): _parse_relation,
    ord("Y"): _parse_type,
    ord("I"): _parse_insert,
    ord("U"): _parse_update,
    ord("D"): _parse_delete,
    ord("T"): _parse_truncate,
    ord("M"): _parse_message,
}

_NAMES = {
    ord("B"): "Begin",
    ord("C"): "Commit",
    ord("O"): "Origin",
    ord("R"): "Relation",
    ord("Y"): "Type",
    ord("I"): "Insert",
    ord("U"): "Update",
    ord("D"): "Delete",
    ord("T"): "Truncate",
    ord("M"): "Message",
}


def decode_message(payload: bytes | memoryview) -> PgoutputMessage:
    """Decode one pgoutput (protocol version 1) message, starting with its tag byte.

    Raises :class:`DecodeError` naming the tag and byte offset for an empty, truncated or
    over-long message, an unknown tag, an unknown tuple value kind or invalid UTF-8.
    """
    buf = payload if type(payload) is bytes else bytes(payload)
    try:
        parser = _PARSERS[buf[0]]
    except KeyError:
        raise DecodeError(f"unknown pgoutput message tag {_show_tag(buf[0])} at byte offset 0") from None
    except IndexError:
        raise DecodeError("empty pgoutput message (no tag byte at byte offset 0)") from None
    try:
        msg, pos = parser(buf, 1)
    except _Malformed as exc:
        tag = buf[0]
        raise DecodeError(
            f"pgoutput {_NAMES[tag]} message {_show_tag(tag)}: {exc.reason} "
            f"at byte offset {exc.offset} of {len(buf)}"
        ) from None
    if pos != len(buf):
        tag = buf[0]
        raise DecodeError(
            f"pgoutput {_NAMES[tag]} message {_show_tag(tag)}: {len(buf) - pos} leftover bytes "
            f"at byte offset {pos} of {len(buf)}"
        )
    return msg
