"""The one typed config object, loaded from a TOML file and the environment, validated at start.

Every key can come from an environment variable named ``CDC_`` + the key path in upper case with
dots as underscores (``site.dsn`` -> ``CDC_SITE_DSN``); the environment wins over the file, so
Kubernetes Secrets can carry DSNs. Free librdkafka settings: ``[kafka.config]`` in the file, or
``CDC_KAFKA_CONFIG_<NAME>`` where ``<NAME>`` is the librdkafka key in upper case with dots as
underscores (``CDC_KAFKA_CONFIG_SASL_PASSWORD`` -> ``sasl.password``). Lists from the
environment are comma-separated.

Secrets (passwords in DSNs, ``*password*``/``*secret*`` librdkafka keys) are redacted in reprs
and logs.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cdc.core.errors import ConfigError

SITE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}\Z")
_SECRET_KEY_RE = re.compile(r"password|secret|token|key\.pem|jaas|user\.info", re.IGNORECASE)
_DSN_PASSWORD_RE = re.compile(r"(password\s*=\s*)(\S+)|(://[^:/@\s]+:)([^@\s]+)(@)", re.IGNORECASE)


def redact_dsn(dsn: str) -> str:
    """A DSN with its password replaced by ``***`` (key=value and URI forms)."""
    def repl(m: re.Match[str]) -> str:
        if m.group(1):
            return m.group(1) + "***"
        return f"{m.group(3)}***{m.group(5)}"
    return _DSN_PASSWORD_RE.sub(repl, dsn)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteConfig(_Section):
    """The site database and what to replicate from it."""

    id: str
    dsn: str = Field(repr=False)
    tables: list[str] = ["public.*"]
    exclude: list[str] = []
    slot: str | None = None
    publication: str = "tributary"
    status_interval_s: float = Field(10.0, gt=0, le=60)
    #: how often the source looks for new tables that site.tables selects
    table_refresh_s: float = Field(5.0, gt=0, le=3600)
    #: copy rows that exist before the stream carries them (at first start, and of tables that
    #: join later): "initial"; or "never"
    snapshot: Literal["initial", "never"] = "initial"
    snapshot_chunk_rows: int = Field(10_000, ge=1, le=10_000_000)
    #: an empty transaction (a logical message) this often: an idle site's lag stays fresh in
    #: the cloud and its slot keeps advancing; 0 turns heartbeats off
    heartbeat_interval_s: float = Field(10.0, ge=0, le=3600)
    #: WAL the slot may retain before a metric and a log line raise the alarm
    max_retained_wal_bytes: int = Field(10 * 1024**3, gt=0)

    @field_validator("id")
    @classmethod
    def _site_id(cls, v: str) -> str:
        if not SITE_ID_RE.match(v):
            raise ValueError("must be 1-63 characters of letters, digits, '_' or '-', "
                             "starting with a letter or digit (it names a Kafka topic)")
        return v

    @field_validator("slot")
    @classmethod
    def _slot(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[a-z0-9_]{1,63}", v):
            raise ValueError("replication slot names are 1-63 lower case letters, digits or '_'")
        return v

    @property
    def slot_name(self) -> str:
        return self.slot or "tributary_" + re.sub(r"[^a-z0-9_]", "_", self.id.lower())

    def __repr__(self) -> str:
        return (f"SiteConfig(id={self.id!r}, dsn={redact_dsn(self.dsn)!r}, tables={self.tables!r}, "
                f"exclude={self.exclude!r}, slot={self.slot_name!r}, "
                f"publication={self.publication!r})")


class KafkaConfig(_Section):
    """The Kafka cluster and topic naming."""

    bootstrap_servers: str
    topic_prefix: str = "tributary"
    config: dict[str, str | int | float | bool] = {}
    topic_config: dict[str, str] = {}
    #: Confluent Schema Registry (wire format 0x00 + schema ID); unset: self-contained mode
    schema_registry_url: str | None = None
    #: more registry client settings, e.g. "basic.auth.user.info"
    schema_registry_config: dict[str, str] = {}

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,200}", v):
            raise ValueError("must be letters, digits, '.', '_' or '-'")
        return v

    def site_topic(self, site_id: str) -> str:
        return f"{self.topic_prefix}.{site_id}"

    @property
    def schema_topic(self) -> str:
        return f"{self.topic_prefix}._schemas"

    @property
    def site_topic_pattern(self) -> str:
        """Regex subscription for every site topic (not the schema topic)."""
        return "^" + re.escape(self.topic_prefix) + r"\.[A-Za-z0-9][A-Za-z0-9_-]*$"

    def site_of_topic(self, topic: str) -> str | None:
        prefix = self.topic_prefix + "."
        if topic.startswith(prefix) and SITE_ID_RE.match(topic[len(prefix):]):
            return topic[len(prefix):]
        return None

    def redacted(self) -> dict[str, Any]:
        return {k: ("***" if _SECRET_KEY_RE.search(k) else v) for k, v in self.config.items()}

    @field_validator("schema_registry_url")
    @classmethod
    def _registry_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"(https?|mock)://", v):
            raise ValueError("must start with http://, https:// or mock:// (tests)")
        return v

    def __repr__(self) -> str:
        return (f"KafkaConfig(bootstrap_servers={self.bootstrap_servers!r}, "
                f"topic_prefix={self.topic_prefix!r}, config={self.redacted()!r}, "
                f"schema_registry_url={redact_dsn(self.schema_registry_url or '') or None!r})")


class SinkConfig(_Section):
    """The cloud database and how events are applied to it."""

    dsn: str = Field(repr=False)
    group_id: str = "tributary-sink"
    site_column: str = "site_id"
    tables: dict[str, str] = {}
    batch_max_changes: int = Field(20000, gt=0)
    batch_max_ms: int = Field(200, gt=0)
    create_tables: bool = True
    #: per site table: "upsert" (default: a row's newest values win) or "append" (rows never
    #: change, e.g. sensor readings: an insert that meets an existing row leaves it as it is)
    table_modes: dict[str, Literal["upsert", "append"]] = {}
    #: a site transaction the cloud cannot apply goes to this Kafka topic, whole, and its site
    #: goes on (unset: the site stops until the cause is fixed)
    dead_letter_topic: str | None = None
    #: a Kafka consumer outside its group this long while site topics wait is replaced by a
    #: new one (librdkafka can miss its way back in after the group coordinator moved)
    group_stuck_after_s: float = Field(60.0, ge=10)

    @field_validator("dead_letter_topic")
    @classmethod
    def _topic(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", v):
            raise ValueError("must be a Kafka topic name: letters, digits, '.', '_' or '-'")
        return v

    @field_validator("table_modes")
    @classmethod
    def _modes(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if name.count(".") != 1:
                raise ValueError(f"{name!r} must be schema.table (the site table)")
        return v

    @field_validator("tables")
    @classmethod
    def _mapping(cls, v: dict[str, str]) -> dict[str, str]:
        for src, dst in v.items():
            for name in (src, dst):
                if name.count(".") != 1:
                    raise ValueError(f"{name!r} must be schema.table")
        # two site tables in one cloud table: each switch between them would look like the
        # table dropped and created again, and remove the other's rows of that site
        landing: dict[str, str] = {}
        for src, dst in v.items():
            if dst in landing:
                raise ValueError(f"site tables {landing[dst]!r} and {src!r} would both land in "
                                 f"cloud table {dst!r}: map each to a cloud table of its own")
            landing[dst] = src
        return v

    def __repr__(self) -> str:
        return (f"SinkConfig(dsn={redact_dsn(self.dsn)!r}, group_id={self.group_id!r}, "
                f"site_column={self.site_column!r}, tables={self.tables!r})")


class MetricsConfig(_Section):
    """The HTTP endpoint of /metrics (Prometheus), /healthz and /readyz; off without a port."""

    host: str = "127.0.0.1"  # "0.0.0.0" in a pod, for the kubelet's probes and Prometheus
    port: int | None = Field(None, ge=1, le=65535)


class LogConfig(_Section):
    format: Literal["json", "text"] = "json"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Config(_Section):
    """A whole config file: a site config has [site], a cloud config has [sink]."""

    site: SiteConfig | None = None
    kafka: KafkaConfig
    sink: SinkConfig | None = None
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    path: str = ""  # where it was read from, for messages

    def need_site(self) -> SiteConfig:
        if self.site is None:
            raise ConfigError(f"{self.path}: [site] section is required for this command "
                              "(site.id, site.dsn)")
        return self.site

    def need_sink(self) -> SinkConfig:
        if self.sink is None:
            raise ConfigError(f"{self.path}: [sink] section is required for this command "
                              "(sink.dsn)")
        return self.sink


_SECTIONS: dict[str, type[BaseModel]] = {
    "site": SiteConfig, "kafka": KafkaConfig, "sink": SinkConfig, "log": LogConfig,
    "metrics": MetricsConfig}
_LIST_FIELDS = {("site", "tables"), ("site", "exclude")}
_DICT_FIELDS = {("kafka", "config"), ("kafka", "topic_config"), ("sink", "tables")}


def _apply_environ(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Overlay CDC_* environment variables on the file's data."""
    for section, model in _SECTIONS.items():
        for field in model.model_fields:
            if (section, field) in _DICT_FIELDS:
                prefix = f"CDC_{section.upper()}_{field.upper()}_"
                for name, value in environ.items():
                    if name.startswith(prefix) and len(name) > len(prefix):
                        key = name[len(prefix):].lower().replace("_", ".")
                        data.setdefault(section, {}).setdefault(field, {})[key] = value
                continue
            name = f"CDC_{section.upper()}_{field.upper()}"
            if name in environ:
                value: Any = environ[name]
                if (section, field) in _LIST_FIELDS:
                    value = [p.strip() for p in value.split(",") if p.strip()]
                data.setdefault(section, {})[field] = value
    return data


def _dead_letters_apart(config: Config) -> Config:
    """The dead-letter topic must not look like a site topic: the sink would read it as one."""
    topic = config.sink.dead_letter_topic if config.sink else None
    if topic and (config.kafka.site_of_topic(topic) or topic == config.kafka.schema_topic):
        raise ConfigError(
            f"{config.path}: sink.dead_letter_topic: {topic!r} would be read as a site topic "
            f"of kafka.topic_prefix {config.kafka.topic_prefix!r}; name it e.g. "
            f"'{config.kafka.topic_prefix}._dead_letters'")
    return config


def _key_of(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, overlay the environment, validate. Errors name the file and the key."""
    environ = os.environ if environ is None else environ
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from exc
    data = _apply_environ(data, environ)
    data["path"] = str(path)
    try:
        return _dead_letters_apart(Config.model_validate(data))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = _key_of(err["loc"])
        kind = err["type"]
        if kind == "missing":
            msg = "required key is missing"
        elif kind == "extra_forbidden":
            msg = "unknown key"
        else:
            msg = err["msg"]
            if "input" in err and not isinstance(err["input"], dict) and "dsn" not in key:
                msg += f" (got {err['input']!r})"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        env = "CDC_" + key.upper().replace(".", "_")
        raise ConfigError(f"{path}: {key}: {msg}{more} [file key {key} or env {env}]") from None
