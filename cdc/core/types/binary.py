"""bytea, as Avro bytes.

pgoutput prints bytea in hex output form (``\\x0a1b``, pinned on every connection by
:mod:`cdc.runtime.pgsession`); the cloud reads the same form back.

Pure: no I/O.
"""

from __future__ import annotations

from binascii import unhexlify

from cdc.core.types.kind import READ_BYTES, Kind

BYTEA = 17


def bytea_value(raw: bytes) -> bytes:
    """bytea's hex output (``\\x0a1b``) -> the bytes."""
    if raw[:2] != b"\\x":
        raise ValueError(f"bytea not in hex output form: {raw[:10]!r}")
    return unhexlify(raw[2:])


def bytea_text(value: bytes) -> str:
    """The bytes -> bytea's hex input form."""
    return "\\x" + value.hex()


BYTES = Kind("bytes", "bytes", bytea_value, "e{i} = string(_bytea(v{i}))", READ_BYTES,
             to_text=bytea_text, edges=(b"\\x", b"\\x00ff10", b"\\x" + b"ab" * 1000))

KINDS = (BYTES,)
BY_OID = {BYTEA: BYTES}
SQL_NAMES = {BYTEA: "bytea"}
ENCODER_HELPERS = {"_bytea": bytea_value}
