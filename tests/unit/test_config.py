"""Config loading: file + environment, validation errors naming file and key, redaction."""

from pathlib import Path

import pytest

from cdc.core.config import load_config, redact_dsn
from cdc.core.errors import ConfigError

SITE = """
[site]
id = "plant-1"
dsn = "host=127.0.0.1 user=cdc password=s3cret dbname=site"
tables = ["public.*"]
exclude = ["public.tmp_*"]

[kafka]
bootstrap_servers = "127.0.0.1:9092"
[kafka.config]
"sasl.password" = "hunter2"
"linger.ms" = 5
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_site_config_loads_with_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, SITE), {})
    assert cfg.site is not None and cfg.site.id == "plant-1"
    assert cfg.site.slot_name == "tributary_plant_1"
    assert cfg.kafka.site_topic("plant-1") == "tributary.plant-1"
    assert cfg.kafka.config["linger.ms"] == 5
    assert cfg.sink is None


def test_environment_overrides_file(tmp_path: Path) -> None:
    env = {"CDC_SITE_DSN": "host=db password=fromenv", "CDC_SITE_TABLES": "public.a, iot.*",
           "CDC_KAFKA_CONFIG_SECURITY_PROTOCOL": "SASL_SSL"}
    cfg = load_config(write(tmp_path, SITE), env)
    assert cfg.site.dsn == "host=db password=fromenv"
    assert cfg.site.tables == ["public.a", "iot.*"]
    assert cfg.kafka.config["security.protocol"] == "SASL_SSL"


def test_env_alone_can_supply_a_required_key(tmp_path: Path) -> None:
    text = SITE.replace('dsn = "host=127.0.0.1 user=cdc password=s3cret dbname=site"\n', "")
    with pytest.raises(ConfigError, match="site.dsn: required key is missing"):
        load_config(write(tmp_path, text), {})
    assert load_config(write(tmp_path, text), {"CDC_SITE_DSN": "host=x"}).site.dsn == "host=x"


@pytest.mark.parametrize("text, message", [
    (SITE.replace('id = "plant-1"', 'id = "bad.id"'), r"site.id: .*letters, digits"),
    (SITE.replace('tables = ["public.*"]', 'tables = "public.*"'), r"site.tables: "),
    (SITE + "\n[sink]\ndsn = 'x'\nbatch_max_changes = 'many'\n", r"sink.batch_max_changes"),
    (SITE.replace("[kafka]", "[kafka]\nbogus = 1"), r"kafka.bogus: unknown key"),
    ("[site\n", r"not valid TOML"),
])
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path, {})
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", {})


def test_secrets_are_redacted_in_reprs(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, SITE), {})
    text = repr(cfg.site) + repr(cfg.kafka) + repr(cfg)
    assert "s3cret" not in text and "hunter2" not in text
    assert redact_dsn("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert redact_dsn("host=h password='x y'") .startswith("host=h password=***")


def test_topic_pattern_excludes_schema_topic(tmp_path: Path) -> None:
    import re
    cfg = load_config(write(tmp_path, SITE), {})
    pattern = re.compile(cfg.kafka.site_topic_pattern)
    assert pattern.match("tributary.plant-1")
    assert not pattern.match(cfg.kafka.schema_topic)
    assert cfg.kafka.site_of_topic("tributary.plant-1") == "plant-1"


def test_two_site_tables_mapped_to_one_cloud_table_are_refused(tmp_path: Path) -> None:
    text = """
[sink]
dsn = "host=cloud"
[sink.tables]
"public.readings" = "telemetry.readings"
"iot.readings" = "telemetry.readings"
[kafka]
bootstrap_servers = "127.0.0.1:9092"
"""
    with pytest.raises(ConfigError, match="'public.readings' and 'iot.readings' would both land "
                                          "in cloud table 'telemetry.readings'"):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize("topic, message", [
    ("tributary.dead-letters", "would be read as a site topic"),
    ("tributary._schemas", "would be read as a site topic"),
    ("dead letters", "must be a Kafka topic name"),
])
def test_a_dead_letter_topic_the_sink_would_read_as_a_site_is_refused(
        tmp_path: Path, topic: str, message: str) -> None:
    text = f"""
[sink]
dsn = "host=cloud"
dead_letter_topic = "{topic}"
[kafka]
bootstrap_servers = "127.0.0.1:9092"
"""
    with pytest.raises(ConfigError, match=f"sink.dead_letter_topic: .*{message}"):
        load_config(write(tmp_path, text))
    ok = text.replace(topic, "tributary._dead_letters")
    assert load_config(write(tmp_path, ok)).need_sink().dead_letter_topic == \
        "tributary._dead_letters"
