"""The import rule, read from every module's imports (ast), so the layout holds as code moves.

- ``cdc/core`` (the contract both wings share) imports nothing of ours outside itself, no Kafka
  client and no psycopg but ``psycopg.sql``;
- ``cdc/runtime`` (what both daemons run on) imports only ``cdc/core`` and itself;
- ``sinks`` (the cloud wing) imports only ``cdc/core``, ``cdc/runtime`` and itself;
- ``cdc/source`` (the site wing) never imports ``cdc/ops``; ``cdc/ops`` may read the site
  through ``cdc/source``'s catalog readers;
- nothing under ``cdc/`` but ``cdc/cli.py`` (the composition root) imports ``sinks``.

``KNOWN_BREACHES`` lists what still breaks the rule until its module moves; the test fails when
a listed breach is gone too, so the list stays true.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: module -> the import that breaks the rule today, and where the fix lies
KNOWN_BREACHES: dict[tuple[str, str], str] = {}


def imports_of(path: Path) -> set[str]:
    """What a file imports, at any depth (inside functions too): ``import a.b`` as ``a.b``,
    ``from a import b`` as ``a.b`` (so ``from psycopg import sql`` is ``psycopg.sql``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def ours(name: str) -> bool:
    return name.split(".")[0] in ("cdc", "sinks")


def breaches(root: Path = REPO) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    paths = sorted((root / "cdc").rglob("*.py")) + sorted((root / "sinks").rglob("*.py"))
    for path in paths:
        rel = path.relative_to(root).as_posix()
        for name in imports_of(path):
            if rel.startswith("sinks/"):
                if ours(name) and not name.startswith(("cdc.core", "cdc.runtime", "sinks")):
                    found.add((rel, name))
            elif rel.startswith("cdc/source/") and name.startswith("cdc.ops"):
                found.add((rel, name))
            elif rel.startswith("cdc/core/"):
                if ours(name) and not name.startswith("cdc.core"):
                    found.add((rel, name))
                top = name.split(".")[0]
                if top == "confluent_kafka" or (top == "psycopg"
                                                and not name.startswith("psycopg.sql")):
                    found.add((rel, name))
            elif rel.startswith("cdc/runtime/"):
                if ours(name) and not name.startswith(("cdc.core", "cdc.runtime")):
                    found.add((rel, name))
            elif rel != "cdc/cli.py" and name.split(".")[0] == "sinks":
                found.add((rel, name))
    return found


def test_the_import_rule_holds_but_for_the_known_breaches() -> None:
    found = breaches()
    new = {b for b in found if b not in KNOWN_BREACHES}
    assert not new, f"imports against the layout's rule: {sorted(new)}"
    gone = set(KNOWN_BREACHES) - found
    assert not gone, f"no longer breaches, strike them from KNOWN_BREACHES: {sorted(gone)}"


def test_the_reader_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from sinks import progress_store\n    import cdc.core.lsn\n")
    assert imports_of(module) == {"sinks.progress_store", "cdc.core.lsn"}


def test_the_rule_finds_a_breach_in_each_wing(tmp_path: Path) -> None:
    planted = {
        "cdc/core/a.py": "import psycopg\nfrom cdc.runtime import logs\n",
        "cdc/runtime/b.py": "from cdc.source import pgoutput\n",
        "cdc/source/c.py": "from cdc.ops import status\n",
        "cdc/ops/d.py": "from sinks import sink\n",
        "sinks/e.py": "from cdc.source.publication import list_tables\n",
        "cdc/cli.py": "from sinks import sink\nfrom cdc.source import daemon\n",
    }
    for rel, text in planted.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert breaches(tmp_path) == {
        ("cdc/core/a.py", "psycopg"), ("cdc/core/a.py", "cdc.runtime.logs"),
        ("cdc/runtime/b.py", "cdc.source.pgoutput"), ("cdc/source/c.py", "cdc.ops.status"),
        ("cdc/ops/d.py", "sinks.sink"), ("sinks/e.py", "cdc.source.publication.list_tables")}
