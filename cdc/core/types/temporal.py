"""Dates and times: the family's kinds (Avro's date, time-micros and timestamps), and the
calendar arithmetic between PostgreSQL's text and Avro's numbers, no datetime.

Avro's ``date`` counts days and ``timestamp-micros`` microseconds from 1970-01-01; PostgreSQL's
range is far wider than Python's ``datetime`` (4713 BC to 5874897 AD for dates, 294276 AD for
timestamps), so the conversions here work on the proleptic Gregorian calendar PostgreSQL uses,
with astronomical years (1 BC is year 0). Text is PostgreSQL's ISO output (``DateStyle=ISO``,
pinned on every connection by :mod:`cdc.runtime.pgsession`); the text written back is accepted by any
PostgreSQL input function under any DateStyle.

Pure: text in, numbers out, and the reverse.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta

from cdc.core.types.kind import READ_LONG, Kind

DAY_US = 86_400_000_000
_UNIX_ORDINAL = date(1970, 1, 1).toordinal()
_EPOCH = datetime(1970, 1, 1)
_MIN_FAST_DAYS = date(1, 1, 1).toordinal() - _UNIX_ORDINAL
_MAX_FAST_DAYS = date(9999, 12, 31).toordinal() - _UNIX_ORDINAL

_DATE = re.compile(rb"(\d+)-(\d\d)-(\d\d)( BC)?\Z")
_TIMESTAMP = re.compile(
    rb"(\d+)-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?"
    rb"(?:([+-])(\d\d)(?::(\d\d))?(?::(\d\d))?)?( BC)?\Z")
_TIME = re.compile(rb"(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?\Z")


class TemporalFormatError(ValueError):
    """Text that is not PostgreSQL's ISO date/time output."""


def days_from_civil(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to an astronomical-year Gregorian date (H. Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def civil_from_days(days: int) -> tuple[int, int, int]:
    """(astronomical year, month, day) of a day count from 1970-01-01."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def _year(digits: bytes, bc: bytes | None) -> int:
    year = int(digits)
    return 1 - year if bc else year


def date_days(raw: bytes) -> int:
    """``2024-02-29`` / ``0044-03-15 BC`` -> days from 1970-01-01."""
    if len(raw) == 10:
        try:
            return date(int(raw[:4]), int(raw[5:7]), int(raw[8:])).toordinal() - _UNIX_ORDINAL
        except ValueError:
            pass
    m = _DATE.match(raw)
    if m is None:
        raise TemporalFormatError(f"not an ISO date: {raw!r}")
    return days_from_civil(_year(m[1], m[4]), int(m[2]), int(m[3]))


def _fraction_us(digits: bytes | None) -> int:
    return int(digits.ljust(6, b"0")) if digits else 0


_WALL: dict[bytes, int] = {}  # b"YYYY-MM-DD HH:MM:SS" -> seconds from 1970 (AD, 4-digit years)


def timestamp_micros(raw: bytes) -> int:
    """``2024-02-29 12:00:00.5[+05:30][ BC]`` -> microseconds from 1970-01-01 (UTC when an
    offset is given, else the wall-clock reading as if it were UTC, as Avro's local timestamp).

    The source's hot path: a stream's timestamps cluster, so whole seconds are cached, and the
    common tails (none, ``+00``, a fraction) are read without a regular expression."""
    rest = raw[19:]
    if raw[4:5] == b"-" and (not rest or rest == b"+00" or rest[:1] == b"."):
        seconds = _WALL.get(raw[:19])
        if seconds is None:
            seconds = _wall_seconds(raw[:19])
        if not rest or rest == b"+00":
            return seconds * 1_000_000
        tail = rest[1:]
        if tail.endswith(b"+00"):
            tail = tail[:-3]
        if 0 < len(tail) <= 6 and tail.isdigit():
            return seconds * 1_000_000 + int(tail.ljust(6, b"0"))
    return _timestamp_micros_any(raw)


def _wall_seconds(head: bytes) -> int:
    seconds = (datetime.fromisoformat(head.decode()) - _EPOCH) // timedelta(seconds=1)
    if len(_WALL) >= 65536:
        _WALL.clear()
    _WALL[head] = seconds
    return seconds


def _timestamp_micros_any(raw: bytes) -> int:
    """Any ISO timestamp PostgreSQL prints: offsets with minutes and seconds, BC, long years."""
    m = _TIMESTAMP.match(raw)
    if m is None:
        raise TemporalFormatError(f"not an ISO timestamp: {raw!r}")
    days = days_from_civil(_year(m[1], m[12]), int(m[2]), int(m[3]))
    seconds = int(m[4]) * 3600 + int(m[5]) * 60 + int(m[6])
    if m[8]:
        offset = int(m[9]) * 3600 + int(m[10] or 0) * 60 + int(m[11] or 0)
        seconds -= offset if m[8] == b"+" else -offset
    return days * DAY_US + seconds * 1_000_000 + _fraction_us(m[7])


def time_micros(raw: bytes) -> int:
    """``13:45:00.25`` -> microseconds after midnight (``24:00:00`` is 86,400,000,000)."""
    m = _TIME.match(raw)
    if m is None:
        raise TemporalFormatError(f"not an ISO time: {raw!r}")
    return (int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3])) * 1_000_000 + _fraction_us(m[4])


def date_text(days: int) -> str:
    """Days from 1970-01-01 -> ISO date text, ``BC`` for years before 1."""
    if _MIN_FAST_DAYS <= days <= _MAX_FAST_DAYS:
        return date.fromordinal(days + _UNIX_ORDINAL).isoformat()
    year, month, day = civil_from_days(days)
    if year <= 0:
        return f"{1 - year:04d}-{month:02d}-{day:02d} BC"
    return f"{year:04d}-{month:02d}-{day:02d}"


def time_text(micros: int) -> str:
    """Microseconds after midnight -> ``HH:MM:SS[.ffffff]`` (24:00:00 included)."""
    seconds, us = divmod(micros, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    if us:  # as PostgreSQL prints it: no trailing zeros
        return f"{hour:02d}:{minute:02d}:{second:02d}.{us:06d}".rstrip("0")
    return f"{hour:02d}:{minute:02d}:{second:02d}"


_SECONDS: dict[int, str] = {}  # seconds from 1970 -> "YYYY-MM-DD HH:MM:SS" (AD years only)


def timestamp_text(micros: int, utc: bool) -> str:
    """Microseconds from 1970-01-01 -> ISO timestamp text; ``+00`` appended for ``utc``.

    The sink's hot path: a stream's timestamps cluster, so whole seconds are cached."""
    seconds, us = divmod(micros, 1_000_000)
    head = _SECONDS.get(seconds)
    if head is None:
        days = seconds // 86400
        if not _MIN_FAST_DAYS <= days <= _MAX_FAST_DAYS:
            return _timestamp_text_wide(micros, utc)
        head = (_EPOCH + timedelta(seconds=seconds)).isoformat(" ")
        if len(_SECONDS) >= 65536:
            _SECONDS.clear()
        _SECONDS[seconds] = head
    if us:  # as PostgreSQL prints it: no trailing zeros
        head = f"{head}.{us:06d}".rstrip("0")
    return head + "+00" if utc else head


def _timestamp_text_wide(micros: int, utc: bool) -> str:
    """Years outside 1..9999, BC included (``BC`` goes last, after the offset)."""
    days, us = divmod(micros, DAY_US)
    head = date_text(days)
    bc = head.endswith(" BC")
    if bc:
        head = head[:-3]
    text = f"{head} {time_text(us)}{'+00' if utc else ''}"
    return text + " BC" if bc else text


# -- the family: date, time, timestamp, timestamptz as Avro's logical types ----------------------
DATE_OID, TIME_OID, TIMESTAMP_OID, TIMESTAMPTZ_OID, INTERVAL_OID, TIMETZ_OID = (
    1082, 1083, 1114, 1184, 1186, 1266)
LONG_MAX = 2 ** 63 - 1


def beyond_timestamp_micros(raw: bytes) -> bool:
    """A timestamp past 294247-01-10 04:00:54.775807 UTC: PostgreSQL counts from 2000, Avro from
    1970, so its last 30 years do not fit Avro's long. Only five- and six-digit years are checked
    (their fifth character is a digit)."""
    return raw[4:5] != b"-" and timestamp_micros(raw) > LONG_MAX


_INFINITIES = (b"infinity", b"-infinity")
DATE = Kind("date", {"type": "int", "logicalType": "date"}, date_days,
            "e{i} = zigzag(_date(v{i}))", READ_LONG, to_text=date_text, special=True,
            edges=(b"2024-02-29", b"1970-01-01", b"0001-01-01", b"0001-12-31 BC",
                   b"4714-11-24 BC", b"5874897-12-31") + _INFINITIES)
TIME = Kind("time-micros", {"type": "long", "logicalType": "time-micros"}, time_micros,
            "e{i} = zigzag(_time(v{i}))", READ_LONG, to_text=time_text,
            edges=(b"00:00:00", b"23:59:59.999999", b"24:00:00", b"12:00:00.000001"))


def _timestamp(name: str, utc: bool, edges: tuple[bytes, ...]) -> Kind:
    return Kind(name, {"type": "long", "logicalType": name}, timestamp_micros,
                "e{i} = zigzag(_timestamp(v{i}))", READ_LONG,
                to_text=lambda us: timestamp_text(us, utc=utc), special=True,
                beyond=beyond_timestamp_micros, edges=edges + _INFINITIES)


TIMESTAMP = _timestamp("local-timestamp-micros", False, (
    b"2024-02-29 12:34:56.123456", b"1969-12-31 23:59:59.999999", b"0044-03-15 12:00:00 BC",
    b"4714-11-24 00:00:00 BC", b"294276-12-31 23:59:59.999999"))
TIMESTAMPTZ = _timestamp("timestamp-micros", True, (
    b"2024-02-29 12:34:56.5+00", b"0001-01-01 00:00:00+00 BC",
    b"294276-12-31 23:59:59.999999+00", b"294246-01-01 00:00:00+00"))

KINDS = (DATE, TIME, TIMESTAMP, TIMESTAMPTZ)
BY_OID = {DATE_OID: DATE, TIME_OID: TIME, TIMESTAMP_OID: TIMESTAMP, TIMESTAMPTZ_OID: TIMESTAMPTZ}
#: interval and timetz have no Avro logical type: they travel as text
SQL_NAMES = {DATE_OID: "date", TIME_OID: "time without time zone",
             TIMESTAMP_OID: "timestamp without time zone",
             TIMESTAMPTZ_OID: "timestamp with time zone", INTERVAL_OID: "interval",
             TIMETZ_OID: "time with time zone"}
ENCODER_HELPERS = {"_date": date_days, "_time": time_micros, "_timestamp": timestamp_micros}


def sql_name(type_oid: int, typmod: int) -> str | None:
    """The type's name with its precision, as ``format_type`` prints it (``timestamp(3) with
    time zone``); None for an interval with modifiers (they carry field names: the catalog
    prints those)."""
    name = SQL_NAMES[type_oid]
    if typmod < 0 or type_oid == DATE_OID:
        return name
    if type_oid == INTERVAL_OID:
        return None
    head, sep, zone = name.partition(" with")
    return f"{head}({typmod}){sep}{zone}"


_PRECISION = re.compile(r"(timestamp|time)\((\d)\)( with(?:out)? time zone)\Z")


def holds(cloud_type: str, site_type: str) -> bool | None:
    """A time or timestamp of default precision (6) holds every lower precision; None: not
    a time type of a lower precision."""
    site = _PRECISION.match(site_type)
    if site and cloud_type == site[1] + site[3]:
        return True
    return None
