"""Integers: smallint, integer, bigint and oid, as Avro int and long.

Their text is a decimal integer; Avro's zigzag varint holds every value. The cloud may widen a
column along smallint -> integer -> bigint when the site does.

Pure: no I/O.
"""

from __future__ import annotations

from cdc.core.types.kind import READ_LONG, Kind

INT2, INT4, INT8, OID = 21, 23, 20, 26

#: PostgreSQL's int2 and int4: Avro int
INT = Kind("int", "int", int, "e{i} = zigzag(int(v{i}))", READ_LONG, copy="str(v{i})",
           edges=(b"-2147483648", b"2147483647", b"0", b"-32768", b"32767"))
#: int8 and oid (unsigned 32 bits: beyond int): Avro long
LONG = Kind("long", "long", int, "e{i} = zigzag(int(v{i}))", READ_LONG, copy="str(v{i})",
            edges=(b"-9223372036854775808", b"9223372036854775807", b"0", b"4294967295"))

KINDS = (INT, LONG)
BY_OID = {INT2: INT, INT4: INT, INT8: LONG, OID: LONG}
SQL_NAMES = {INT2: "smallint", INT4: "integer", INT8: "bigint", OID: "oid"}

_RANK = {"smallint": 1, "integer": 2, "bigint": 3}


def holds(cloud_type: str, site_type: str) -> bool | None:
    """Whether a cloud integer column holds every site integer value; None: not integers."""
    if cloud_type in _RANK and site_type in _RANK:
        return _RANK[cloud_type] >= _RANK[site_type]
    return None
