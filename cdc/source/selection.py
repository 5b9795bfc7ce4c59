"""Which tables' changes leave the site: those ``site.tables`` selects, whatever the slot carries.

The publication normally holds just the selected tables, but one an administrator made
beforehand ``FOR ALL TABLES`` (the site role may not own the tables) makes the slot carry every
table: other schemas, and the source's own bookkeeping (schema ``tributary``). Those changes
stop here, by relation: a Relation message names the table at that point of the stream, and the
changes after it carry only its OID. Chunks of a TimescaleDB hypertable arrive already named as
their hypertable (:mod:`cdc.source.timescale`, which goes first).

Pure: messages in, the ones to pass on out.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from cdc.core import site_ledger
from cdc.source.pgoutput import Delete, Insert, Relation, Truncate, Update

#: schemas whose tables are never a site's data: PostgreSQL's, TimescaleDB's, the source's own
NEVER_SENT_SCHEMAS = frozenset({"information_schema", site_ledger.SCHEMA})
NEVER_SENT_PREFIXES = ("pg_", "_timescaledb", "timescaledb_")


def never_sent(schema: str) -> bool:
    """Whether tables of ``schema`` are never replicated, whatever the patterns say."""
    return schema in NEVER_SENT_SCHEMAS or schema.startswith(NEVER_SENT_PREFIXES)


class TableSelection:
    """Feeds on decoded messages in stream order; returns the message to pass on, or None."""

    def __init__(self, selected: Callable[[str], bool]) -> None:
        self._selected = selected
        self._left_out: set[int] = set()  # relation OIDs whose changes stop here
        self.left_out_changes = 0

    def __call__(self, msg: object) -> object | None:
        kind = type(msg)
        if kind is Insert or kind is Update or kind is Delete:
            if msg.relation_oid in self._left_out:  # type: ignore[attr-defined]
                self.left_out_changes += 1
                return None
            return msg
        if kind is Relation:
            rel: Relation = msg  # type: ignore[assignment]
            if never_sent(rel.namespace) or not self._selected(f"{rel.namespace}.{rel.name}"):
                self._left_out.add(rel.oid)
                return None
            self._left_out.discard(rel.oid)
            return msg
        if kind is Truncate and self._left_out:
            trunc: Truncate = msg  # type: ignore[assignment]
            oids = tuple(o for o in trunc.relation_oids if o not in self._left_out)
            if not oids:
                return None
            return msg if len(oids) == len(trunc.relation_oids) else replace(
                trunc, relation_oids=oids)
        return msg

    def oids(self) -> set[int]:
        """The relations left out so far (the dropped-relation sweep forgets gone ones)."""
        return set(self._left_out)

    def forget(self, oids: set[int]) -> None:
        self._left_out -= oids
