"""Floating point: real and double precision, as Avro float and double.

NaN, Infinity, -Infinity and -0 are values of both Avro types, so every value travels typed.
A float4's text is rounded once to float4 (:func:`float4`), as PostgreSQL reads it; the cloud
never widens real to double precision by itself (a float4 printed as a double is another
number: ``0.1::real::double precision`` is 0.10000000149011612).

Pure: no I/O.
"""

from __future__ import annotations

import math
import struct
from fractions import Fraction

from cdc.core.types.kind import READ_DOUBLE, READ_FLOAT, Kind

FLOAT4, FLOAT8 = 700, 701

_INF = math.inf
_F32 = struct.Struct("<f")
_U32 = struct.Struct("<I")
_F64 = struct.Struct("<d")
_U64 = struct.Struct("<Q")
_LOW28 = (1 << 28) - 1


def float4(raw: bytes | str) -> float:
    """A float4's text -> its value (a Python float equal to the float4), rounded ONCE.

    ``float()`` rounds the decimal text to a double, and narrowing that to float4 rounds again:
    when the double lands exactly halfway between two float4 values the second rounding can
    pick the wrong one (``7.038531e-26`` became another float4). PostgreSQL's ``float4in``
    rounds the text straight to float4 (``strtof``); so does this: the double is used as is
    unless it is such a halfway point, and then the exact decimal value decides.
    """
    d = float(raw)
    f = _F32.unpack(_F32.pack(d))[0]
    # a halfway point between two float4 values has 25 significant bits: the low 28 of the
    # double's 52 are zero (the common case, one test on the hot path, is that they are not)
    if f == d or _U64.unpack(_F64.pack(d))[0] & _LOW28 or d != d or f in (_INF, -_INF):
        return f
    bits = _U32.unpack(_F32.pack(f))[0]
    if f == 0.0:
        bits = 1 if d > 0 else 0x80000001
    else:
        bits += 1 if (d > f) == (f > 0) else -1
    g = _F32.unpack(_U32.pack(bits))[0]  # the float4 on the other side of d
    if (f + g) / 2 != d:
        return f  # d is not halfway: one rounding of the text gives the same float4
    exact = Fraction(raw.decode() if isinstance(raw, bytes) else raw)
    df, dg = abs(exact - Fraction(f)), abs(exact - Fraction(g))
    if df != dg:
        return f if df < dg else g
    return f if _U32.unpack(_F32.pack(f))[0] % 2 == 0 else g  # a true tie: to even


def float_text(value: float) -> str:
    """A float in PostgreSQL's input text (NaN and infinities spelled as it spells them)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


_COPY = "(repr(v{i}) if -_INF < v{i} < _INF else _float_text(v{i}))"

FLOAT = Kind("float", "float", float4, "e{i} = _FLOAT(_float4(v{i}))", READ_FLOAT, copy=_COPY,
             edges=(b"NaN", b"Infinity", b"-Infinity", b"-0", b"1e-45", b"3.4028235e+38",
                    b"7.038531e-26", b"1.1754944e-38"))
DOUBLE = Kind("double", "double", float, "e{i} = _DOUBLE(float(v{i}))", READ_DOUBLE, copy=_COPY,
              edges=(b"NaN", b"Infinity", b"-Infinity", b"-0", b"5e-324",
                     b"1.7976931348623157e+308", b"0.1"))

KINDS = (FLOAT, DOUBLE)
BY_OID = {FLOAT4: FLOAT, FLOAT8: DOUBLE}
SQL_NAMES = {FLOAT4: "real", FLOAT8: "double precision"}
ENCODER_HELPERS = {"_DOUBLE": struct.Struct("<d").pack, "_FLOAT": struct.Struct("<f").pack,
                   "_float4": float4}
COPY_HELPERS = {"_INF": _INF, "_float_text": float_text}
