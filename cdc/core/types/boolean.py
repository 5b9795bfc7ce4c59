"""boolean, as Avro boolean: pgoutput prints ``t`` or ``f``.

Pure: no I/O.
"""

from __future__ import annotations

from cdc.core.types.kind import READ_BOOLEAN, Kind

BOOL = 16


def _bool(raw: bytes) -> bool:
    return raw == b"t"


BOOLEAN = Kind("boolean", "boolean", _bool, "e{i} = b'\\x01' if v{i} == b't' else b'\\x00'",
               READ_BOOLEAN, copy="('t' if v{i} else 'f')", edges=(b"t", b"f"))

KINDS = (BOOLEAN,)
BY_OID = {BOOL: BOOLEAN}
SQL_NAMES = {BOOL: "boolean"}
