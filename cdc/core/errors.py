"""One error family for Tributary.

Every error a user can meet is a subclass of :class:`TributaryError`, raised ``from`` its
cause, with a message naming the site, table, column, LSN or config key involved.
"""

from __future__ import annotations


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
