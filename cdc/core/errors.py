"""One error family for Tributary, and :func:`classify`, the one rule for what a fault stops.

Every error a user can meet is a subclass of :class:`TributaryError`, raised ``from`` its
cause, with a message naming the site, table, column, LSN or config key involved. Each falls in
one :class:`Family`: transient (a server away: the daemon starts a new session after a
backoff), a site fault (one site's data: that site stops, the others go on) or fatal (the
daemon ends).
"""

from __future__ import annotations

import enum
import struct


class TributaryError(Exception):
    """Base of every error Tributary raises on purpose."""


class ConfigError(TributaryError):
    """A config file or environment variable is missing, unreadable or invalid."""


class DecodeError(TributaryError):
    """pgoutput bytes that do not parse: unknown tag, unknown tuple kind, truncated or leftover bytes."""


class SchemaError(TributaryError):
    """A relation or Avro schema that cannot be mapped or read."""


class TypeMappingError(SchemaError):
    """A column type the source cannot carry faithfully."""


class DeliveryError(TributaryError):
    """Kafka did not acknowledge an event; the source must restart from the slot's confirmed point."""


class ReplicationError(TributaryError):
    """The replication connection or slot is unusable (wrong wal_level, slot invalidated, ...)."""


class ApplyError(TributaryError):
    """The sink cannot apply an event to the cloud database; that site's stream stops."""


class ReservedNameError(ApplyError):
    """A site's events name a cloud schema, type or column that is not a site's to write (the
    sink's bookkeeping, the system catalogs, the site column): that site stops."""


class ProgressError(TributaryError):
    """The sink's recorded progress contradicts the stream (LSNs going backwards for one identity)."""


class Fenced(TributaryError):
    """Another sink replica applied to a partition since this one read it (this one was frozen
    past its session timeout, or lost the partition): the cloud transaction is rolled back and
    the sink joins its group again, resuming from what the cloud holds."""


class ConnectionLost(TributaryError):
    """A server (site, cloud or Kafka) went away or cannot be reached yet: retried with backoff."""


class GroupStuck(ConnectionLost):
    """The sink's Kafka consumer has been outside its consumer group too long while there are
    site topics to read: a new consumer (a new sink session) replaces it."""


class Family(enum.Enum):
    """What a fault stops."""

    TRANSIENT = "transient"  # a server away or a session fenced: a new session after a backoff
    SITE = "site"  # one site's data: that site stops, the others go on
    FATAL = "fatal"  # a bug, or a setting that cannot work: the daemon ends


_TRANSIENT = (ConnectionLost, DeliveryError, Fenced)
_SITE = (ApplyError, SchemaError, DecodeError, ProgressError)
#: what bytes that are not a record of ours raise while they are decoded (Avro readers, field
#: access): a fault of the site that wrote them, not of the daemon
_RECORD = (ValueError, EOFError, IndexError, KeyError, TypeError, OverflowError, struct.error)
#: the drivers' "server away" errors, by (module, class) so this module imports neither driver:
#: psycopg's OperationalError (connection lost, server shutting down) and confluent-kafka's
#: KafkaException (a broker call failed); tests/unit/test_errors.py holds them to the real classes
_DRIVER_TRANSIENT = {("psycopg", "OperationalError"), ("cimpl", "KafkaException")}


def classify(exc: BaseException, reading_record: bool = False) -> Family:
    """The family of ``exc``; with ``reading_record``, the error came out of decoding one
    record, and a low-level error there (a truncated Avro body) is that record's site's fault."""
    if isinstance(exc, _TRANSIENT) or any(
            (cls.__module__, cls.__qualname__) in _DRIVER_TRANSIENT for cls in type(exc).__mro__):
        return Family.TRANSIENT
    if isinstance(exc, _SITE) or (reading_record and isinstance(exc, _RECORD)):
        return Family.SITE
    return Family.FATAL
