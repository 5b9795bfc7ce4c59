"""Relations the site dropped: when the stream may forget what it knows of them.

pgoutput sends a relation's Relation message once per session, before its first change, so the
source's relation state (cdc.source.relations, cdc.source.timescale) cannot be evicted while the relation
still exists: its next change would arrive without a description. On a TimescaleDB site chunks
come and go (retention, compression), each with a new OID, so that state only stays bounded if
dropped relations leave it. The rule is exact:

- the source asks the site, on its SQL connection, which cached OIDs are gone from
  ``pg_class``, together with the site's WAL insert position ``L`` at that moment: each drop
  committed before ``L``;
- once the stream has received everything up to ``L`` (a Commit ending at or after ``L``, or a
  keepalive at or past it), every change of those relations has been decoded, because a
  transaction that wrote to a relation committed before the DROP that locked it out; only then
  are they forgotten. A relation that later reuses the OID gets a Relation message of its own
  (creating it invalidates pgoutput's per-relation state).

Pure: the catalog query is passed in (:func:`cdc.source.catalog.dropped_relations`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable


class DroppedRelations:
    """OIDs found gone from the site catalog, each held until the stream passes its drop."""

    def __init__(self) -> None:
        self._pending: deque[tuple[int, frozenset[int]]] = deque()  # (site WAL position, OIDs)

    def note(self, oids: Iterable[int], site_lsn: int) -> None:
        """``oids`` were absent from ``pg_class`` when the site's WAL was at ``site_lsn``."""
        found = frozenset(oids)
        if found:
            self._pending.append((site_lsn, found))

    def due(self, stream_lsn: int) -> set[int]:
        """The OIDs that may be forgotten now the stream has received up to ``stream_lsn``."""
        out: set[int] = set()
        pending = self._pending
        while pending and pending[0][0] <= stream_lsn:
            out |= pending.popleft()[1]
        return out

    @property
    def waiting(self) -> int:
        """How many notes still wait for the stream."""
        return len(self._pending)
