"""numeric: as Avro ``decimal(p,s)`` when the column fixes precision and scale, else as text.

PostgreSQL prints a numeric(p,s) value with exactly s fractional digits, so the unscaled
integer is its digits. NaN and (PostgreSQL 14+) +-Infinity have no Avro decimal: they travel as
their text in the ``string`` branch. Unconstrained numeric, negative scales and scales above the
precision have no Avro decimal either: such columns travel as text.

Pure: no I/O.
"""

from __future__ import annotations

import re
from decimal import Decimal
from functools import lru_cache

from cdc.core.types.kind import READ_BYTES, Kind

NUMERIC = 1700


def decimal_unscaled(raw: bytes, scale: int) -> int:
    """numeric text -> the unscaled integer of Avro's decimal with ``scale``.

    PostgreSQL prints a numeric(p,s) value with exactly s fractional digits, so dropping the
    point is the common case; any other text is scaled exactly or refused."""
    dot = raw.find(b".")
    if (dot < 0 and scale == 0) or (dot >= 0 and len(raw) - dot - 1 == scale):
        return int(raw.replace(b".", b"") if dot >= 0 else raw)
    scaled = Decimal(raw.decode()).scaleb(scale)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{raw.decode()} has more than {scale} fractional digits")
    return int(scaled)


def decimal_bytes(unscaled: int) -> bytes:
    """Avro decimal bytes: big-endian two's complement, as few bytes as fastavro writes."""
    return unscaled.to_bytes((unscaled.bit_length() + 8) // 8, "big", signed=True)


def decimal_text(unscaled: int, scale: int) -> str:
    """The unscaled integer of a decimal -> its text with ``scale`` fractional digits."""
    if scale == 0:
        return str(unscaled)
    digits = str(abs(unscaled)).rjust(scale + 1, "0")
    return f"{'-' if unscaled < 0 else ''}{digits[:-scale]}.{digits[-scale:]}"


def _edges(precision: int, scale: int) -> tuple[bytes, ...]:
    top = decimal_text(10 ** precision - 1, scale)
    return (decimal_text(0, scale).encode(), top.encode(), b"-" + top.encode(),
            decimal_text(1, scale).encode(), b"NaN", b"Infinity", b"-Infinity")


@lru_cache(maxsize=None)
def decimal_kind(precision: int, scale: int) -> Kind:
    """The kind of numeric(precision, scale): one object per pair."""
    return Kind(
        f"decimal({precision},{scale})",
        {"type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale},
        lambda raw: decimal_bytes(decimal_unscaled(raw, scale)),
        f"e{{i}} = string(_decimal_bytes(_unscaled(v{{i}}, {scale})))", READ_BYTES,
        to_text=lambda b: decimal_text(int.from_bytes(b, "big", signed=True), scale),
        special=True, edges=_edges(precision, scale))


def typmod_precision_scale(typmod: int) -> tuple[int, int] | None:
    """numeric's (precision, scale) from its typmod; None when unconstrained. Negative scales
    (PostgreSQL 15+) are stored as 11-bit two's complement."""
    if typmod < 4:
        return None
    precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0x7FF
    return precision, scale - 0x800 if scale & 0x400 else scale


def kind_for(typmod: int) -> Kind | None:
    """The kind of a numeric column with this typmod, or None: it travels as text."""
    params = typmod_precision_scale(typmod)
    if params is None or not 0 <= params[1] <= params[0]:
        return None  # unconstrained, negative scales and scale > precision: no Avro decimal
    return decimal_kind(*params)


def sql_suffix(typmod: int) -> str:
    """The ``(p,s)`` format_type prints after ``numeric``."""
    params = typmod_precision_scale(typmod)
    return "" if params is None else f"({params[0]},{params[1]})"


SQL_NAMES = {NUMERIC: "numeric"}
ENCODER_HELPERS = {"_decimal_bytes": decimal_bytes, "_unscaled": decimal_unscaled}

_NUMERIC = re.compile(r"numeric\((\d+),(-?\d+)\)\Z")


def holds(cloud_type: str, site_type: str) -> bool | None:
    """Whether a cloud numeric column holds every site numeric value; None: not numerics."""
    if cloud_type == "numeric" and site_type.startswith("numeric"):
        return True
    cloud, site = _NUMERIC.match(cloud_type), _NUMERIC.match(site_type)
    if cloud and site:
        p1, s1, p2, s2 = int(cloud[1]), int(cloud[2]), int(site[1]), int(site[2])
        return s1 >= s2 and p1 - s1 >= p2 - s2
    return None
