"""Test-side pgoutput ENCODER: the inverse of :func:`cdc.source.pgoutput.decode_message` and
:func:`cdc.source.pgoutput.decode_frame`, written independently of the decoder (plain ``struct.pack``,
no shared tables) so that round trips check one against the other.

Only for tests: it builds the bytes PostgreSQL's ``pgoutput`` plugin would send for a message.
"""

from __future__ import annotations

import struct

from cdc.source.pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    BinaryDatum,
    Commit,
    Delete,
    Insert,
    Keepalive,
    Message,
    Origin,
    Relation,
    Truncate,
    Type,
    Update,
    XLogData,
)


def _cstring(text: str) -> bytes:
    data = text.encode()
    assert b"\0" not in data, f"pgoutput strings cannot contain NUL: {text!r}"
    return data + b"\0"


def encode_tuple(values: tuple) -> bytes:
    out = [struct.pack(">H", len(values))]
    for value in values:
        if value is None:
            out.append(b"n")
        elif value is UNCHANGED_TOAST:
            out.append(b"u")
        elif isinstance(value, BinaryDatum):
            out.append(b"b" + struct.pack(">I", len(value.data)) + value.data)
        elif isinstance(value, bytes):
            out.append(b"t" + struct.pack(">I", len(value)) + value)
        else:
            raise TypeError(f"not a tuple value: {value!r}")
    return b"".join(out)


def encode_message(msg: object) -> bytes:
    """The pgoutput protocol version 1 bytes of ``msg``, starting with its tag byte."""
    if isinstance(msg, Begin):
        return b"B" + struct.pack(">QqI", msg.final_lsn, msg.commit_ts, msg.xid)
    if isinstance(msg, Commit):
        return b"C" + struct.pack(">BQQq", msg.flags, msg.commit_lsn, msg.end_lsn, msg.commit_ts)
    if isinstance(msg, Origin):
        return b"O" + struct.pack(">Q", msg.commit_lsn) + _cstring(msg.name)
    if isinstance(msg, Relation):
        assert len(msg.replica_identity) == 1
        out = [
            b"R",
            struct.pack(">I", msg.oid),
            _cstring(msg.namespace),
            _cstring(msg.name),
            struct.pack(">BH", ord(msg.replica_identity), len(msg.columns)),
        ]
        for col in msg.columns:
            out.append(struct.pack(">B", col.flags) + _cstring(col.name))
            out.append(struct.pack(">Ii", col.type_oid, col.type_modifier))
        return b"".join(out)
    if isinstance(msg, Type):
        return b"Y" + struct.pack(">I", msg.oid) + _cstring(msg.namespace) + _cstring(msg.name)
    if isinstance(msg, Insert):
        return b"I" + struct.pack(">I", msg.relation_oid) + b"N" + encode_tuple(msg.new)
    if isinstance(msg, Update):
        out = b"U" + struct.pack(">I", msg.relation_oid)
        if msg.old is not None:
            assert msg.old_kind in ("K", "O")
            out += msg.old_kind.encode() + encode_tuple(msg.old)
        else:
            assert msg.old_kind is None
        return out + b"N" + encode_tuple(msg.new)
    if isinstance(msg, Delete):
        assert msg.old_kind in ("K", "O")
        return b"D" + struct.pack(">I", msg.relation_oid) + msg.old_kind.encode() + encode_tuple(msg.old)
    if isinstance(msg, Truncate):
        options = (1 if msg.cascade else 0) | (2 if msg.restart_identity else 0)
        oids = msg.relation_oids
        return b"T" + struct.pack(f">IB{len(oids)}I", len(oids), options, *oids)
    if isinstance(msg, Message):
        return (
            b"M"
            + struct.pack(">BQ", 1 if msg.transactional else 0, msg.lsn)
            + _cstring(msg.prefix)
            + struct.pack(">I", len(msg.content))
            + msg.content
        )
    raise TypeError(f"not a pgoutput message: {msg!r}")


def encode_frame(frame: XLogData | Keepalive) -> bytes:
    """The CopyData payload of a replication stream frame ('w' or 'k')."""
    if isinstance(frame, XLogData):
        return b"w" + struct.pack(">QQq", frame.wal_start, frame.wal_end, frame.send_time) + bytes(frame.payload)
    if isinstance(frame, Keepalive):
        return b"k" + struct.pack(">QqB", frame.wal_end, frame.send_time, 1 if frame.reply_requested else 0)
    raise TypeError(f"not a replication frame: {frame!r}")
