"""``cdc``: the command line. It only wires config, logging and the daemons together.

Exit codes: 0 done, 1 a check failed or a daemon stopped on an error, 2 bad config or usage.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Any, Callable

import click

from cdc.core.config import Config, load_config
from cdc.core.errors import ConfigError, TributaryError

log = logging.getLogger("cdc")

CONFIG_OPTION = click.option(
    "--config", "config_path", required=True, metavar="FILE",
    help="TOML config file; every key can also come from CDC_<SECTION>_<KEY> variables.")
LOG_FORMAT_OPTION = click.option(
    "--log-format", type=click.Choice(["json", "text"]), default=None,
    help="Log lines as JSON objects (default, for collectors) or text for people.")


def _load(config_path: str, log_format: str | None) -> Config:
    try:
        config = load_config(config_path)
        from cdc.runtime import failpoints  # parses TRIBUTARY_FAILPOINTS: an unknown name exits 2
    except ConfigError as exc:
        click.echo(f"cdc: config error: {exc}", err=True)
        sys.exit(2)
    from cdc.runtime.logs import setup_logging
    setup_logging(log_format or config.log.format, config.log.level)
    if failpoints.armed():
        log.warning("failpoints armed (tests only)", extra={"failpoints": failpoints.armed()})
    return config


def _stop_on_signals() -> threading.Event:
    """SIGTERM / SIGINT set the event: the daemon finishes what it has in hand and exits 0."""
    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def _run_daemon(name: str, body: Callable[[], None]) -> None:
    try:
        body()
    except ConfigError as exc:
        log.error(str(exc))
        click.echo(f"cdc: config error: {exc}", err=True)
        sys.exit(2)
    except TributaryError as exc:
        log.error(f"{name} stopped: {exc}", extra={"error_type": type(exc).__name__})
        sys.exit(1)


def _construct(factory: Callable[[], Any]) -> Any:
    """Build a daemon; a config it cannot run with exits 2 like a bad config file."""
    try:
        return factory()
    except ConfigError as exc:
        log.error(str(exc))
        click.echo(f"cdc: config error: {exc}", err=True)
        sys.exit(2)


def _serve_and_run(name: str, config: Config, factory: Callable[[], Any]) -> None:
    """Build the daemon, serve its /metrics, /healthz and /readyz when metrics.port is set,
    run it until stopped."""
    daemon = _construct(factory)
    server = None
    if config.metrics.port is not None:
        from cdc.runtime.health import MetricsServer
        try:
            server = MetricsServer(config.metrics.host, config.metrics.port,
                                   daemon.metrics.registry, daemon.health,
                                   getattr(daemon, "refresh_metrics", None)).start()
        except OSError as exc:
            click.echo(f"cdc: config error: {config.path}: metrics.port {config.metrics.port} "
                       f"on {config.metrics.host}: {exc.strerror or exc}", err=True)
            sys.exit(2)
    try:
        _run_daemon(name, daemon.run)
    finally:
        if server is not None:
            server.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Tributary: replicate many PostgreSQL / TimescaleDB sites into one cloud database via Kafka.

    \b
    At each site:   cdc check --config site.toml
                    cdc source run --config site.toml
    In the cloud:   cdc sink run --config cloud.toml
    Proof:          cdc verify --config site.toml --cloud cloud.toml
    Operating:      cdc status --config cloud.toml     (or site.toml)
                    cdc replay --config cloud.toml --to-time ... [--dry-run]
    """


@main.command()
@CONFIG_OPTION
def check(config_path: str) -> None:
    """Check that a site (or the cloud) is ready: one line per check, exit 0 only when all hold."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        click.echo(f"cdc: config error: {exc}", err=True)
        sys.exit(2)
    from cdc.ops.checks import run_checks
    results = run_checks(config)
    for result in results:
        click.echo(f"{'ok  ' if result.ok else 'FAIL'}  {result.name}: {result.detail}")
    sys.exit(0 if all(r.ok for r in results) else 1)


@main.command("status")
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")
def status_command(config_path: str, as_json: bool) -> None:
    """Where replication stands, without a running daemon.

    \b
    With a cloud config ([sink]): one line per site: state (applying, lagging, stopped),
      last commit applied (LSN, site time), lag in seconds and in records on its topic, dead
      letters not applied again, error.
    With a site config ([site]): the slot: active, wal_status, confirmed LSN, lag and retained
      WAL in bytes, bytes left before invalidation, snapshot copies under way.
    Exit 0; 1 when a site is stopped or has dead letters pending, or the slot is lost or
    missing.
    """
    config = _load(config_path, "text")
    import psycopg

    from cdc.ops import status
    try:
        if config.sink is not None:
            lines = status.cloud_status(config)
            click.echo(status.render_cloud(lines, as_json))
            bad = any(line.state == "stopped" or line.dead_letters for line in lines)
        else:
            line = status.site_status(config)
            click.echo(status.render_site(line, as_json))
            bad = not line.exists or line.wal_status == "lost"
    except ConfigError as exc:
        click.echo(f"cdc: config error: {exc}", err=True)
        sys.exit(2)
    except psycopg.Error as exc:
        click.echo(f"cdc: {str(exc).strip()}", err=True)
        sys.exit(1)
    sys.exit(1 if bad else 0)


@main.command("replay")
@CONFIG_OPTION
@click.option("--site", "sites", multiple=True, metavar="ID",
              help="Only this site (repeatable; default: every site the cloud knows).")
@click.option("--table", "tables", multiple=True, metavar="SCHEMA.TABLE",
              help="With --reapply: apply again only this site table's changes (repeatable).")
@click.option("--to-time", type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S",
                                                "%Y-%m-%d %H:%M:%S"]),
              help="Rewind to the first record Kafka received at or after this time "
                   "(ISO 8601; without an offset, UTC).")
@click.option("--to-offset", type=click.IntRange(min=0), help="Rewind to this Kafka offset.")
@click.option("--from-beginning", is_flag=True, help="Rewind to the oldest record Kafka holds.")
@click.option("--reapply", is_flag=True,
              help="Apply the re-read transactions again (repair a damaged table); by default "
                   "those already applied stay skipped.")
@click.option("--dead-letters", is_flag=True,
              help="Apply the pending dead letters again (sink.dead_letter_topic), once their "
                   "cause is fixed: each site transaction whole, in a cloud transaction of its "
                   "own; one that fails again stays pending. Sinks may keep running.")
@click.option("--dry-run", is_flag=True, help="Show what would be read again; change nothing.")
def replay_command(config_path: str, sites: tuple[str, ...], tables: tuple[str, ...],
                   to_time: Any, to_offset: int | None, from_beginning: bool, reapply: bool,
                   dead_letters: bool, dry_run: bool) -> None:
    """Rewind the sink to a time or an offset, for all sites or chosen sites and tables;
    or apply the dead letters again.

    \b
    Stop every sink of the group first (kubectl scale deploy/tributary-sink --replicas=0); the
    command refuses while one runs. Then start the sinks again: they read from the new offsets.
    Examples:
      cdc replay --config cloud.toml --to-time 2026-11-20T00:00:00Z --dry-run
      cdc replay --config cloud.toml --site plant-a --table public.readings \\
                 --from-beginning --reapply
      cdc replay --config cloud.toml --dead-letters --site plant-a
    A dead letter applies as the site wrote it then: rows the site changed again since are
    set back to that older state until their next change arrives.
    """
    from datetime import timezone

    from cdc.ops import replay
    config = _load(config_path, "text")
    if dead_letters:
        if to_time or to_offset is not None or from_beginning or reapply or tables:
            click.echo("cdc: --dead-letters takes only --site and --dry-run", err=True)
            sys.exit(2)
        _replay_dead_letters(config, list(sites), dry_run)
        return
    if sum(x is not None and x is not False for x in (to_time, to_offset, from_beginning)) != 1:
        click.echo("cdc: give exactly one of --to-time, --to-offset, --from-beginning", err=True)
        sys.exit(2)
    if tables and not reapply:
        click.echo("cdc: --table chooses what --reapply applies again; without --reapply every "
                   "re-read transaction is skipped anyway", err=True)
        sys.exit(2)
    for name in tables:
        if name.count(".") != 1:
            click.echo(f"cdc: --table {name!r} must be schema.table (the site table)", err=True)
            sys.exit(2)
    if to_time is not None and to_time.tzinfo is None:
        to_time = to_time.replace(tzinfo=timezone.utc)
    import psycopg
    try:
        config.need_sink()
        plans = replay.plan(config, list(sites), to_time, to_offset)
        click.echo(replay.describe(plans, reapply, list(tables)))
        if dry_run:
            click.echo("dry run: nothing changed")
            return
        members = replay.running_members(config)
        if members:
            raise replay.ReplayRefused(
                f"{members} sink(s) of group {config.need_sink().group_id} are running; stop "
                "them first (a running sink would write its own offsets over the rewind)")
        replay.apply(config, plans, reapply, list(tables))
    except ConfigError as exc:
        click.echo(f"cdc: config error: {exc}", err=True)
        sys.exit(2)
    except (TributaryError, psycopg.Error) as exc:
        click.echo(f"cdc: replay refused: {str(exc).strip()}", err=True)
        sys.exit(1)
    click.echo("rewound; start the sink(s) to read again from there")


def _replay_dead_letters(config: Config, sites: list[str], dry_run: bool) -> None:
    import psycopg

    from sinks import dead_letters as dl
    try:
        sink = config.need_sink()
        with psycopg.connect(sink.dsn) as conn:
            letters = dl.pending(conn, sites)
        for x in letters:
            click.echo(f"{x.site:<16} {x.topic}[{x.partition}] offsets {x.first_offset}.."
                       f"{x.last_offset} commit LSN {x.commit_lsn} xid {x.xid} tables "
                       f"{','.join(x.tables)}: {x.reason}")
        if not letters:
            click.echo("no pending dead letters" + (f" of {', '.join(sites)}" if sites else ""))
            return
        if dry_run:
            click.echo(f"dry run: {len(letters)} dead letter(s) would be applied again")
            return

        def report(letter: Any, error: str | None) -> None:
            click.echo(f"{letter.site} offsets {letter.first_offset}..{letter.last_offset}: "
                       + ("applied" if error is None else f"failed again, still pending: {error}"))

        applied, failed = dl.reapply(config, sites, report)
    except ConfigError as exc:
        click.echo(f"cdc: config error: {exc}", err=True)
        sys.exit(2)
    except (TributaryError, psycopg.Error) as exc:
        click.echo(f"cdc: dead letters: {str(exc).strip()}", err=True)
        sys.exit(1)
    click.echo(f"{applied} dead letter(s) applied, {failed} still pending")
    sys.exit(1 if failed else 0)


@main.command("verify")
@CONFIG_OPTION
@click.option("--cloud", "cloud_path", required=True, type=click.Path(dir_okay=False),
              help="The cloud config (its [sink] section names the cloud database).")
@click.option("--table", "patterns", multiple=True,
              help="Only site tables matching this schema.table glob (repeatable).")
@click.option("--chunk-rows", default=10_000, show_default=True, type=click.IntRange(min=100),
              help="Keys per compared range.")
@click.option("--settle", default=30.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds to re-check differing keys while the cloud catches up.")
def verify_command(config_path: str, cloud_path: str, patterns: tuple[str, ...],
                   chunk_rows: int, settle: float) -> None:
    """Compare a site with the cloud, table by table; exit 0 only when all agree.

    Row counts, then hashes over key ranges, narrowing to the differing keys; keys that differ
    while the site is live are checked again once the cloud has applied the site's position.
    """
    site_config = _load(config_path, "text")
    cloud_config = _load(cloud_path, "text")
    if site_config.site is None or cloud_config.sink is None:
        click.echo("cdc: config error: --config needs a [site] section and --cloud a [sink] one",
                   err=True)
        sys.exit(2)
    import psycopg

    from cdc.runtime.pgsession import pinned_conninfo
    from cdc.source.publication import list_tables, matches
    from cdc.ops.verify import report, verify
    site, sink = site_config.site, cloud_config.sink
    try:
        with psycopg.connect(pinned_conninfo(site.dsn), autocommit=True) as site_conn, \
                psycopg.connect(pinned_conninfo(sink.dsn), autocommit=True) as cloud_conn:
            tables = [(t.schema, t.name) for t in list_tables(site_conn, site.tables, site.exclude)
                      if not patterns or matches(t.qualified, list(patterns), [])]
            results = verify(site_conn, cloud_conn, site.id, tables, sink.tables,
                             sink.site_column, chunk_rows, settle,
                             progress=lambda m: click.echo(m, err=True))
    except psycopg.OperationalError as exc:
        click.echo(f"cdc: cannot connect: {str(exc).strip()}", err=True)
        sys.exit(1)
    for line in report(results):
        click.echo(line)
    sys.exit(0 if all(r.ok for r in results) else 1)


@main.group()
def source() -> None:
    """The site daemon: replication slot -> Avro change events -> Kafka."""


@source.command("run")
@CONFIG_OPTION
@LOG_FORMAT_OPTION
def source_run(config_path: str, log_format: str | None) -> None:
    """Stream the site's changes into its Kafka topic until SIGTERM."""
    config = _load(config_path, log_format)
    stop = _stop_on_signals()
    from cdc.source.daemon import Source
    log.info("source starting", extra={"site": repr(config.site), "kafka": repr(config.kafka)})
    _serve_and_run("source", config, lambda: Source(config, stop))


@source.command("snapshot")
@CONFIG_OPTION
@click.option("--table", "tables", multiple=True, required=True,
              help="schema.table to copy again from the start (repeatable).")
@click.option("--cancel", is_flag=True, help="Stop copying these tables instead.")
def source_snapshot(config_path: str, tables: tuple[str, ...], cancel: bool) -> None:
    """Ask the running source to copy tables (again), or to stop a copy under way.

    The source copies existing rows by itself at a slot's first start and when a table joins;
    this re-copies a table (e.g. after a column was added with a volatile default) or cancels.
    Progress: SELECT * FROM tributary.snapshot_progress at the site.
    """
    config = _load(config_path, "text")
    site = config.need_site()
    import psycopg

    from cdc.runtime.pgsession import pinned_conninfo
    from cdc.source.snapshot import Snapshots, cancel as cancel_table
    try:
        with psycopg.connect(pinned_conninfo(site.dsn), autocommit=True) as conn:
            for name in tables:
                schema, _, table = name.partition(".")
                if not table:
                    click.echo(f"cdc: --table {name!r} must be schema.table", err=True)
                    sys.exit(2)
                if cancel:
                    done = cancel_table(conn, site.slot_name, schema, table)
                    click.echo(f"{name}: {'cancelled' if done else 'no copy under way'}")
                else:
                    Snapshots(conn, site.slot_name, site.snapshot_chunk_rows).request(
                        [(schema, table)], "asked with cdc source snapshot")
                    click.echo(f"{name}: snapshot requested; the running source copies it")
    except psycopg.Error as exc:
        click.echo(f"cdc: {str(exc).strip()}", err=True)
        sys.exit(1)


@main.group()
def sink() -> None:
    """The cloud daemon: Kafka -> site transactions applied to the cloud database."""


@sink.command("run")
@CONFIG_OPTION
@LOG_FORMAT_OPTION
def sink_run(config_path: str, log_format: str | None) -> None:
    """Apply every site topic to the cloud database until SIGTERM."""
    config = _load(config_path, log_format)
    stop = _stop_on_signals()
    from sinks.sink import Sink
    log.info("sink starting", extra={"sink": repr(config.sink), "kafka": repr(config.kafka)})
    _serve_and_run("sink", config, lambda: Sink(config, stop))


@sink.command("remove-site")
@CONFIG_OPTION
@click.argument("site_id")
@click.option("--yes", is_flag=True, help="Do it without asking.")
def sink_remove_site(config_path: str, site_id: str, yes: bool) -> None:
    """Delete SITE_ID's rows from every cloud table and its progress, in one transaction.

    \b
    Stop the site's source first. The whole sequence (README, "Removing a site"):
      1. stop the source;
      2. at the site: SELECT pg_drop_replication_slot('<slot>'); DROP PUBLICATION <name>;
      3. cdc sink remove-site <site id> --config cloud.toml;
      4. delete the topic <prefix>.<site id> (kafka-topics.sh --delete).
    """
    config = _load(config_path, "text")
    sink_cfg = config.sink
    if sink_cfg is None:
        click.echo("cdc: config error: this command needs a [sink] section", err=True)
        sys.exit(2)
    if not yes:
        click.confirm(f"Delete every row of site {site_id!r} from the cloud database?", abort=True)
    import psycopg

    from cdc.runtime.pgsession import pinned_conninfo
    from cdc.ops.remove_site import remove_site
    try:
        with psycopg.connect(pinned_conninfo(sink_cfg.dsn)) as conn:
            removed = remove_site(conn, site_id, sink_cfg.site_column, config.kafka)
    except psycopg.Error as exc:
        click.echo(f"cdc: cannot remove site {site_id}: {str(exc).strip()}", err=True)
        sys.exit(1)
    for r in removed:
        click.echo(f"{r.table}: {r.rows} row(s) deleted")
    click.echo(f"site {site_id} removed from the cloud ({len(removed)} table(s))")


if __name__ == "__main__":
    main()
