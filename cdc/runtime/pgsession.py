"""Session settings pinned on every connection, so a value's text means the same everywhere.

pgoutput prints values with the walsender's settings, and the cloud reads COPY text with its
own: a site with ``DateStyle=SQL, DMY``, ``bytea_output=escape``, ``extra_float_digits=0`` (which
rounds floats) or another ``lc_monetary`` would otherwise send text the source misreads or the
cloud reads as a different value. These settings are passed as startup options, appended after
any the DSN already carries (the last ``-c`` wins), so they hold from the first message on.
"""

from __future__ import annotations

from psycopg.conninfo import conninfo_to_dict, make_conninfo

#: The settings every Tributary connection runs with (all settable by any user).
PINNED_SETTINGS: dict[str, str] = {
    "DateStyle": "ISO,MDY",  # dates and timestamps as 2024-02-29 12:00:00[+00][ BC]
    "IntervalStyle": "postgres",  # 1 year 2 mons -3 days +04:05:06
    "TimeZone": "UTC",  # timestamptz printed with +00
    "extra_float_digits": "1",  # shortest exact float text (PostgreSQL 12+)
    "bytea_output": "hex",  # \x0a1b
    "lc_monetary": "C",  # money text read back with the same locale
}


def pinned_conninfo(dsn: str) -> str:
    """``dsn`` with the pinned settings appended to its ``options``."""
    params = conninfo_to_dict(dsn)
    pinned = " ".join(f"-c {name}={value}" for name, value in PINNED_SETTINGS.items())
    existing = params.get("options")
    params["options"] = f"{existing} {pinned}" if existing else pinned
    return make_conninfo("", **params)
