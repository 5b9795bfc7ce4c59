"""PostgreSQL dates and times as Avro's numbers, and back: calendar arithmetic, no datetime.

Avro's ``date`` counts days and ``timestamp-micros`` microseconds from 1970-01-01; PostgreSQL's
range is far wider than Python's ``datetime`` (4713 BC to 5874897 AD for dates, 294276 AD for
timestamps), so the conversions here work on the proleptic Gregorian calendar PostgreSQL uses,
with astronomical years (1 BC is year 0). Text is PostgreSQL's ISO output (``DateStyle=ISO``,
pinned on every connection by :mod:`cdc.pgsession`); the text written back is accepted by any
PostgreSQL input function under any DateStyle.

Pure: text in, numbers out, and the reverse.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

DAY_US = 86_400_000_000
_UNIX_ORDINAL = date(1970, 1, 1).toordinal()
_EPOCH = datetime(1970, 1, 1)
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_US = timedelta(microseconds=1)
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


def timestamp_micros(raw: bytes) -> int:
    """``2024-02-29 12:00:00.5[+05:30][ BC]`` -> microseconds from 1970-01-01 (UTC when an
    offset is given, else the wall-clock reading as if it were UTC, as Avro's local timestamp)."""
    try:  # the common case, four-digit AD years: datetime parses ISO text in C
        moment = datetime.fromisoformat(raw.decode())
    except ValueError:
        pass
    else:
        return (moment - (_EPOCH if moment.tzinfo is None else _EPOCH_UTC)) // _ONE_US
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
    if us:
        return f"{hour:02d}:{minute:02d}:{second:02d}.{us:06d}"
    return f"{hour:02d}:{minute:02d}:{second:02d}"


def timestamp_text(micros: int, utc: bool) -> str:
    """Microseconds from 1970-01-01 -> ISO timestamp text; ``+00`` appended for ``utc``."""
    days, us = divmod(micros, DAY_US)
    if _MIN_FAST_DAYS <= days <= _MAX_FAST_DAYS:
        text = (_EPOCH + timedelta(microseconds=micros)).isoformat(" ")
        return text + "+00" if utc else text
    head = date_text(days)
    bc = head.endswith(" BC")
    if bc:
        head = head[:-3]
    text = f"{head} {time_text(us)}{'+00' if utc else ''}"
    return text + " BC" if bc else text

