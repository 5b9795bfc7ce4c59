"""Types the built-in table does not know, described from the site catalog.

The Relation message names a column's type only by OID. For a type that is not built in, the
site catalog says what it is, and this module turns that into how the column travels:

- a domain travels as its base type (recursively), and the cloud column gets the base type: a
  domain's CHECK expressions are SQL text from the site, which the cloud never executes;
- an enum, a composite type or a range type carries its definition (``pg.defs`` in the event
  schema: labels, attributes with their types, subtype), so the sink can create the same type in
  the cloud before the column that uses it;
- an array of any of these travels as its text, with the element's definitions;
- any other type (from an extension: hstore, PostGIS geometry, ...) travels as its exact text
  output and names its extension, so the sink can say which extension the cloud lacks;
- a pseudo-type cannot be a value at all: a clear error names it.

Pure: the catalog comes in through :class:`Catalog`, which :mod:`cdc.source.catalog` implements.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from cdc.core.errors import TypeMappingError
from cdc.core.types.mapping import ColumnType, builtin_type_sql, value_kind
from cdc.core.types.text import STRING

_PLAIN_IDENT = re.compile(r"[a-z_][a-z0-9_$]*\Z")
_MAX_DEPTH = 16


def quote_ident(name: str) -> str:
    """A name as SQL writes it: bare when it can be, else in double quotes."""
    return name if _PLAIN_IDENT.match(name) else '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class TypeDef:
    """A user-defined type the cloud must have: an enum, a composite or a range type."""

    schema: str
    name: str
    variant: str  # "enum", "composite" or "range"
    labels: tuple[str, ...] = ()  # enum labels in sort order
    attributes: tuple[tuple[str, str], ...] = ()  # composite (name, SQL type)
    subtype: str = ""  # range subtype, SQL

    @property
    def sql_name(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema": self.schema, "name": self.name, "variant": self.variant}
        if self.variant == "enum":
            out["labels"] = list(self.labels)
        elif self.variant == "composite":
            out["attributes"] = [list(a) for a in self.attributes]
        else:
            out["subtype"] = self.subtype
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TypeDef":
        return cls(schema=str(data["schema"]), name=str(data["name"]),
                   variant=str(data["variant"]), labels=tuple(data.get("labels", ())),
                   attributes=tuple((str(a), str(t)) for a, t in data.get("attributes", ())),
                   subtype=str(data.get("subtype", "")))


@dataclass(frozen=True, slots=True)
class TypeRow:
    """What the catalog says of one type (pg_type and its namespace)."""

    typtype: str  # b c d e p r m
    schema: str
    name: str
    formatted: str  # format_type(oid, typmod)
    base_oid: int = 0  # domains: typbasetype
    base_typmod: int = -1  # domains: typtypmod
    element_oid: int = 0  # arrays: typelem
    is_array: bool = False  # typcategory 'A'
    relation_oid: int = 0  # composites: typrelid
    extension: str | None = None  # the extension the type belongs to


class Catalog(Protocol):
    """The site catalog queries type resolution needs (implemented in :mod:`cdc.source.catalog`)."""

    def type_row(self, oid: int, typmod: int) -> TypeRow | None: ...
    def enum_labels(self, oid: int) -> list[str]: ...
    def attributes(self, relation_oid: int) -> list[tuple[str, int, int]]: ...
    def range_subtype(self, oid: int) -> tuple[int, int]: ...
    def multirange_range(self, oid: int) -> int: ...


@dataclass(slots=True)
class _Collected:
    defs: list[TypeDef] = field(default_factory=list)

    def add(self, defs: tuple[TypeDef, ...]) -> None:
        for d in defs:
            if d not in self.defs:
                self.defs.append(d)


def describe(oid: int, typmod: int, catalog: Catalog, depth: int = 0) -> ColumnType:
    """How a column of type ``oid`` (with ``typmod``) travels and what the cloud needs for it."""
    builtin = builtin_type_sql(oid, typmod)
    if builtin is not None:
        return ColumnType(sql=builtin, kind=value_kind(oid, typmod))
    if depth > _MAX_DEPTH:
        raise TypeMappingError(f"type OID {oid} nests more than {_MAX_DEPTH} levels deep")
    row = catalog.type_row(oid, typmod)
    if row is None:
        raise LookupError(f"type OID {oid} is unknown at the site")
    qualified = f"{quote_ident(row.schema)}.{quote_ident(row.name)}"
    if row.typtype == "d":
        base = describe(row.base_oid, row.base_typmod, catalog, depth + 1)
        return replace(base, domain=qualified)
    if row.typtype == "p":
        raise TypeMappingError(f"{row.formatted} is a pseudo-type and cannot be replicated")
    found = _Collected()
    if row.is_array and row.element_oid:
        element = describe(row.element_oid, typmod, catalog, depth + 1)
        return ColumnType(sql=element.sql + "[]", kind=STRING, defs=element.defs,
                          extension=element.extension)
    if row.typtype == "e":
        found.add((TypeDef(row.schema, row.name, "enum",
                           labels=tuple(catalog.enum_labels(oid))),))
    elif row.typtype == "c":
        attributes = []
        for name, att_oid, att_typmod in catalog.attributes(row.relation_oid):
            att = describe(att_oid, att_typmod, catalog, depth + 1)
            found.add(att.defs)
            attributes.append((name, att.sql))
        found.add((TypeDef(row.schema, row.name, "composite", attributes=tuple(attributes)),))
    elif row.typtype == "r":
        sub_oid, sub_typmod = catalog.range_subtype(oid)
        sub = describe(sub_oid, sub_typmod, catalog, depth + 1)
        found.add(sub.defs)
        found.add((TypeDef(row.schema, row.name, "range", subtype=sub.sql),))
    elif row.typtype == "m":
        # a multirange comes with its range type: creating the range creates it too
        found.add(describe(catalog.multirange_range(oid), -1, catalog, depth + 1).defs)
    else:
        return ColumnType(sql=row.formatted, kind=STRING, extension=row.extension)
    return ColumnType(sql=qualified, kind=STRING, defs=tuple(found.defs),
                      extension=row.extension)
