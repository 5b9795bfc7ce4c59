"""Kafka topic creation: a site topic has one partition (a site's changes in commit order)."""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Callable

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from cdc.core.config import KafkaConfig
from cdc.core.errors import DeliveryError

log = logging.getLogger(__name__)


_DIGITS = re.compile(r"\d+")


class _OncePerMinute(logging.Filter):
    """librdkafka repeats a failing connect every second; let each text through once a minute."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        # numbers vary between repeats ("after 4ms in state CONNECT"): one shape, one line
        text = _DIGITS.sub("#", record.getMessage())
        now = time.monotonic()
        if now - self._seen.get(text, -1e9) < 60:
            return False
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[text] = now
        return True


#: librdkafka's own log lines, in our log format instead of raw on stderr
KAFKA_LOG = logging.getLogger("cdc.kafka")
KAFKA_LOG.addFilter(_OncePerMinute())


def client_config(kafka: KafkaConfig, **extra: Any) -> dict[str, Any]:
    """librdkafka settings: bootstrap servers, the user's ``kafka.config``, then ``extra``."""
    conf: dict[str, Any] = {"bootstrap.servers": kafka.bootstrap_servers, "logger": KAFKA_LOG}
    conf.update(kafka.config)
    conf.update(extra)
    return conf


def kafka_error_logger(logger: logging.Logger) -> Callable[[Any], None]:
    """An ``error_cb`` for librdkafka clients: broker trouble shows in our logs, once a minute.

    librdkafka retries connections by itself; these lines say why nothing is flowing.
    """
    last: dict[str, float] = {}

    def report(err: Any) -> None:
        text = str(err)
        now = time.monotonic()
        if now - last.get(text, -1e9) >= 60:
            last[text] = now
            logger.warning("kafka: %s", text, extra={"kafka_error": err.name() if hasattr(err, "name") else text})

    return report


def ensure_topic(kafka: KafkaConfig, name: str, config: dict[str, str] | None = None,
                 timeout: float = 10.0) -> None:
    """Create ``name`` with one partition when missing; an existing topic is left as it is."""
    admin = AdminClient(client_config(kafka))
    try:
        meta = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise DeliveryError(f"Kafka at {kafka.bootstrap_servers} does not answer: {exc}") from exc
    if name in meta.topics and meta.topics[name].error is None:
        return
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=1, replication_factor=-1, config=config or {})],
        operation_timeout=timeout)
    try:
        futures[name].result(timeout)
        log.info("created topic", extra={"topic": name})
    except KafkaException as exc:
        if "TOPIC_ALREADY_EXISTS" not in str(exc):
            raise DeliveryError(f"cannot create topic {name}: {exc}") from exc
