"""What one Avro representation of column values means, end to end: the contract of a kind.

A column travels as one *kind*: the Avro type of its values. A kind is defined once, in the
module of its type family (:mod:`~cdc.core.types.integers`, :mod:`~cdc.core.types.floats`,
:mod:`~cdc.core.types.numeric`, :mod:`~cdc.core.types.temporal`, :mod:`~cdc.core.types.binary`,
:mod:`~cdc.core.types.text`, :mod:`~cdc.core.types.boolean`), with everything both sides do
with it: the source's text -> Avro value and its compiled encoder line, the sink's reading of
the Avro value and its PostgreSQL text, its COPY form, and the edge values tests try.
:mod:`cdc.core.types.mapping` gathers the families.

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

#: how the sink reads a kind's typed Avro branch (:mod:`sinks.decoding`)
READ_LONG, READ_DOUBLE, READ_FLOAT, READ_BOOLEAN, READ_STRING, READ_BYTES = (
    "long", "double", "float", "boolean", "string", "bytes")

#: the COPY text of a str value v{i} (:mod:`sinks.copy_text` gives ``_E``, COPY's escapes)
COPY_AS_TEXT = "v{i}.translate(_E)"


@dataclass(frozen=True)
class Kind:
    """One Avro representation of column values. Kinds compare by name: the name is how a
    schema states it (``long``, ``decimal(10,2)``, ``timestamp-micros``)."""

    name: str
    #: the Avro type of the typed branch
    avro: Any = field(compare=False)
    #: pgoutput's text -> the value a general Avro writer takes (the meaning of the kind;
    #: the compiled ``encode`` line is tested against it)
    from_text: Callable[[bytes], Any] = field(compare=False, repr=False)
    #: the source's compiled encoder: a line computing ``e{i}`` (the Avro bytes) from the text
    #: bytes ``v{i}``, using the names in :data:`cdc.core.types.mapping.ENCODER_SCOPE`
    encode: str = field(compare=False, repr=False)
    #: how the sink reads the typed branch (``READ_*``)
    reader: str = field(compare=False, repr=False)
    #: the Avro value -> the PostgreSQL input text the cloud takes; None when the Avro value
    #: goes to COPY as it is
    to_text: Callable[[Any], str] | None = field(default=None, compare=False, repr=False)
    #: the COPY text of a decoded value ``v{i}`` (never None there), as an expression
    copy: str = field(default=COPY_AS_TEXT, compare=False, repr=False)
    #: whether the PostgreSQL type has values no Avro type of the kind holds (NaN, infinities,
    #: the last years of timestamps): those travel as their text in a ``string`` branch
    special: bool = field(default=False, compare=False)
    #: a text of the typed form that still does not fit the Avro type (goes as text too)
    beyond: Callable[[bytes], bool] | None = field(default=None, compare=False, repr=False)
    #: texts at the edges of the type, as PostgreSQL prints them: tests round-trip them
    edges: tuple[bytes, ...] = field(default=(), compare=False, repr=False)

    def __str__(self) -> str:
        return self.name


def is_special_text(raw: bytes) -> bool:
    """NaN, Infinity, -Infinity, infinity, -infinity: the texts that end in N or y."""
    return raw[-1:] in (b"N", b"y")
