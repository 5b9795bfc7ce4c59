"""The fault suite's TCP proxy, in front of a real broker's extra listener and a real cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from devenv.kafka import KafkaBroker
from devenv.ports import free_port
from devenv.tcp_proxy import TcpProxy


def test_kafka_clients_stay_behind_the_proxy_and_a_cut_stops_them(kafka_libs: Path,
                                                                   tmp_path: Path) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    port = free_port()
    broker = KafkaBroker(tmp_path / "kafka", libs=kafka_libs, extra_listeners={"SITE_A": port})
    with broker.start(), TcpProxy(broker.listener_port("SITE_A"), port=port) as proxy:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
        for future in admin.create_topics([NewTopic("proxied", 1, 1)]).values():
            future.result(30)  # before the 4 s message timeouts below start counting
        producer = Producer({"bootstrap.servers": proxy.address, "message.timeout.ms": 4000})
        results: list[Any] = []

        def send(value: bytes, wait: float) -> None:
            results.clear()
            producer.produce("proxied", value, on_delivery=lambda err, _msg: results.append(err))
            producer.flush(wait)

        send(b"1", 20)
        assert results == [None]
        proxy.cut("blackhole")  # the advertised address is the proxy's: nothing goes around it
        send(b"2", 8)
        assert len(results) == 1 and results[0] is not None  # timed out
        proxy.restore()
        send(b"3", 20)
        assert results == [None]
        proxy.cut("reset")
        proxy.restore()
        send(b"4", 20)
        assert results == [None]


def test_a_reset_cut_breaks_open_connections_and_refuses_new_ones(pg_factory: Any) -> None:
    cluster = pg_factory("proxy_target")
    with TcpProxy(cluster.port) as proxy:
        dsn = f"host=127.0.0.1 port={proxy.port} user=postgres dbname=postgres connect_timeout=5"
        # not "with": its exit would send COMMIT on a connection the cut left mid-query
        conn = psycopg.connect(dsn, autocommit=True)
        try:
            conn.execute("SELECT 1")
            proxy.cut("reset")
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        finally:
            conn.close()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsn)
        proxy.restore()
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
