"""The fault suite's checker: after recovery, is the cloud each site, nothing lost, nothing doubled?

Per site and table it counts

- missing: rows the site holds more often than the cloud holds them for that site,
- extra: rows the cloud holds (for that site) more often than the site,

comparing multisets of whole rows (every column as text), so a table without a key that holds
equal rows counts each copy; and, from a cloud trigger on the versioned table whose rows only
ever rise in ``version`` at the site,

- applied twice: a cloud update that left a row's version as it was (a transaction applied
  again),
- applied stale: a cloud update that lowered it (an older state over a newer one).

The trigger is ``ENABLE ALWAYS``: it fires whatever ``session_replication_role`` the sink's
session uses. Final equality alone cannot see the last two: a repeated or stale apply is
usually overwritten by the next one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import psycopg

from devenv.fault_workload import TABLES
from devenv.pipeline import rows_of

#: the versioned table in the cloud, created before the sink sees it so the trigger is there
#: from the first apply (the sink adopts an existing table with its key)
CLOUD_VERSIONED = ("CREATE TABLE public.versioned (site_id text NOT NULL, id integer NOT NULL,"
                   " version bigint NOT NULL, PRIMARY KEY (site_id, id))")
AUDIT = [
    "CREATE TABLE public.audit (kind text NOT NULL, site text, id int, version bigint)",
    """CREATE FUNCTION public.audit_versions() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF NEW.version < OLD.version THEN
        INSERT INTO public.audit VALUES ('stale', NEW.site_id, NEW.id, NEW.version);
      ELSIF NEW.version = OLD.version THEN
        INSERT INTO public.audit VALUES ('repeated', NEW.site_id, NEW.id, NEW.version);
      END IF;
      RETURN NEW;
    END $$""",
    "CREATE TRIGGER audit_versions BEFORE UPDATE ON public.versioned FOR EACH ROW"
    " EXECUTE FUNCTION public.audit_versions()",
    # ALWAYS: it fires whatever session_replication_role the sink's session runs with
    "ALTER TABLE public.versioned ENABLE ALWAYS TRIGGER audit_versions",
]
AUDITED = "public.versioned"


@dataclass(frozen=True)
class TableCounts:
    """The four counts of one site table; ``twice`` and ``stale`` are None where no trigger
    can see them (tables without a rising version)."""

    site: str
    table: str
    site_rows: int
    cloud_rows: int
    missing: int
    extra: int
    twice: int | None
    stale: int | None

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.extra == 0 and not self.twice and not self.stale

    def as_dict(self) -> dict:
        return asdict(self)


def audit_counts(cloud_dsn: str) -> dict[tuple[str, str], int]:
    """(site, 'stale' | 'repeated') -> how many times the cloud trigger saw it."""
    with psycopg.connect(cloud_dsn) as conn:
        rows = conn.execute("SELECT site, kind, count(*) FROM public.audit GROUP BY 1, 2")
        return {(site, kind): int(n) for site, kind, n in rows.fetchall()}


def multiset_diff(site_rows: list[tuple], cloud_rows: list[tuple]) -> tuple[int, int]:
    """(missing, extra): rows the cloud holds fewer / more times than the site."""
    at_site, in_cloud = Counter(site_rows), Counter(cloud_rows)
    return sum((at_site - in_cloud).values()), sum((in_cloud - at_site).values())


def check(site_dsns: dict[str, str], cloud_dsn: str,
          tables: dict[str, list[str]] = TABLES) -> list[TableCounts]:
    """Compare every site with its rows in the cloud (call it once nothing moves any more)."""
    audit = audit_counts(cloud_dsn)
    out = []
    for site, dsn in sorted(site_dsns.items()):
        for table, columns in tables.items():
            at_site = rows_of(dsn, table, columns)
            in_cloud = rows_of(cloud_dsn, table, columns, where_site=site)
            missing, extra = multiset_diff(at_site, in_cloud)
            audited = table == AUDITED
            out.append(TableCounts(
                site, table, len(at_site), len(in_cloud), missing=missing, extra=extra,
                twice=audit.get((site, "repeated"), 0) if audited else None,
                stale=audit.get((site, "stale"), 0) if audited else None))
    return out


def report(counts: list[TableCounts]) -> str:
    """One line per site and table, ``-`` where a count cannot be seen."""
    def show(v: int | None) -> str:
        return "-" if v is None else str(v)

    lines = [f"{'site':<6} {'table':<18} {'site rows':>9} {'cloud rows':>10} {'missing':>8}"
             f" {'extra':>6} {'twice':>6} {'stale':>6}"]
    for c in counts:
        lines.append(f"{c.site:<6} {c.table:<18} {c.site_rows:>9} {c.cloud_rows:>10}"
                     f" {c.missing:>8} {c.extra:>6} {show(c.twice):>6} {show(c.stale):>6}"
                     f"{'' if c.ok else '   <-- NOT OK'}")
    return "\n".join(lines)
