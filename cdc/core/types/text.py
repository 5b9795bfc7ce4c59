"""Text: every type without a closer Avro type travels as the exact text PostgreSQL printed,
which the cloud's input function reads back bit for bit; and uuid, as Avro's uuid string.

pgoutput's text is already UTF-8, Avro's string encoding: the source copies it through. The
cloud may widen ``character varying(n)`` to a longer one, to unbounded, or to ``text``.

Pure: no I/O.
"""

from __future__ import annotations

import re

from cdc.core.types.kind import READ_STRING, Kind

CHAR, NAME, TEXT, JSON, XML, MONEY, BPCHAR, VARCHAR, BIT, VARBIT, UUID_OID, JSONB = (
    18, 19, 25, 114, 142, 790, 1042, 1043, 1560, 1562, 2950, 3802)

_COPY_THROUGH = "n = len(v{i}); e{i} = (_SMALL[n << 1] if n < 64 else zigzag(n)) + v{i}"


def _text(raw: bytes) -> str:
    return raw.decode()


#: any type's text (the default kind)
STRING = Kind("string", "string", _text, _COPY_THROUGH, READ_STRING,
              edges=(b"", b"tab\there", b"back\\slash", b"line\nbreak", "µ-Ω ✓".encode(),
                     b"x" * 70))
UUID = Kind("uuid", {"type": "string", "logicalType": "uuid"}, _text, _COPY_THROUGH,
            READ_STRING, edges=(b"00000000-0000-0000-0000-000000000000",
                                b"ffffffff-ffff-ffff-ffff-ffffffffffff"))

KINDS = (STRING, UUID)
BY_OID = {UUID_OID: UUID}
#: built-in types that travel as text, by OID -> SQL name as ``format_type`` prints it
SQL_NAMES = {
    CHAR: '"char"', NAME: "name", TEXT: "text", JSON: "json", XML: "xml", MONEY: "money",
    BPCHAR: "character", VARCHAR: "character varying", BIT: "bit", VARBIT: "bit varying",
    UUID_OID: "uuid", JSONB: "jsonb",
    650: "cidr", 869: "inet", 829: "macaddr", 774: "macaddr8", 3614: "tsvector",
    3615: "tsquery", 3220: "pg_lsn", 24: "regproc", 2205: "regclass", 2206: "regtype",
    28: "xid", 27: "tid", 600: "point", 601: "lseg", 602: "path", 603: "box", 604: "polygon",
    628: "line", 718: "circle", 3904: "int4range", 3926: "int8range", 3906: "numrange",
    3908: "tsrange", 3910: "tstzrange", 3912: "daterange", 4451: "int4multirange",
    4536: "int8multirange", 4532: "nummultirange", 4533: "tsmultirange",
    4534: "tstzmultirange", 4535: "datemultirange", 2970: "txid_snapshot",
    5038: "pg_snapshot",
}

#: COPY text format's escapes of a text value
ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
COPY_HELPERS = {"_E": ESCAPES}


def sql_suffix(type_oid: int, typmod: int) -> str:
    """The length ``(n)`` format_type prints after character types and bit strings."""
    if typmod < 0:
        return ""
    if type_oid in (VARCHAR, BPCHAR):
        return f"({typmod - 4})"
    if type_oid in (BIT, VARBIT):
        return f"({typmod})"
    return ""


_VARCHAR = re.compile(r"character varying\((\d+)\)\Z")


def holds(cloud_type: str, site_type: str) -> bool | None:
    """Whether a cloud text column holds every value of a site ``character varying``; None:
    not such a pair."""
    if cloud_type == "text" and site_type.startswith("character varying"):
        return True
    cloud, site = _VARCHAR.match(cloud_type), _VARCHAR.match(site_type)
    if cloud_type == "character varying" and (site or site_type == "character varying"):
        return True
    if cloud and site:
        return int(cloud[1]) >= int(site[1])
    return None
