"""classify: the one rule for what a fault stops, held to the real driver classes."""

from __future__ import annotations

import struct
import threading

import psycopg
import pytest
from confluent_kafka import KafkaError, KafkaException

from cdc.core.errors import (ApplyError, ConfigError, ConnectionLost, DecodeError, DeliveryError,
                             Family, Fenced, GroupStuck, ProgressError, SchemaError,
                             TypeMappingError, classify)
from cdc.runtime.retry import run_with_backoff


@pytest.mark.parametrize("exc", [
    ConnectionLost("site away"), GroupStuck("outside the group"), DeliveryError("no ack"),
    Fenced("another replica"), psycopg.OperationalError("server closed the connection"),
    psycopg.errors.AdminShutdown("terminating connection"),
    KafkaException(KafkaError(KafkaError._TRANSPORT)),
])
def test_servers_away_are_transient(exc: BaseException) -> None:
    assert classify(exc) is Family.TRANSIENT
    assert classify(exc, reading_record=True) is Family.TRANSIENT


@pytest.mark.parametrize("exc", [
    ApplyError("refused"), SchemaError("no schema"), TypeMappingError("no type"),
    DecodeError("bad bytes"), ProgressError("LSN went back"),
])
def test_a_sites_data_stops_that_site(exc: BaseException) -> None:
    assert classify(exc) is Family.SITE


@pytest.mark.parametrize("exc", [ValueError("x"), EOFError(), IndexError(), KeyError("k"),
                                 TypeError(), OverflowError(), struct.error("short")])
def test_low_level_errors_are_a_site_fault_only_while_reading_a_record(exc: BaseException) -> None:
    assert classify(exc, reading_record=True) is Family.SITE
    assert classify(exc) is Family.FATAL


@pytest.mark.parametrize("exc", [ConfigError("bad key"), psycopg.errors.UniqueViolation("dup"),
                                 psycopg.ProgrammingError("bug"), RuntimeError("bug")])
def test_the_rest_ends_the_daemon(exc: BaseException) -> None:
    assert classify(exc) is Family.FATAL
    assert classify(exc, reading_record=True) is Family.FATAL


def test_the_session_loop_retries_transient_faults_and_ends_on_fatal_ones() -> None:
    stop, faults = threading.Event(), [psycopg.OperationalError("away"), ConfigError("bad")]

    def session() -> None:
        raise faults.pop(0)

    with pytest.raises(ConfigError):
        run_with_backoff(session, stop, "test session")
    assert faults == []  # the transient fault was retried, the fatal one ended the loop
