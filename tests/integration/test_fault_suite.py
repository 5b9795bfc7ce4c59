"""The fault suite's reduced form (issue 11): about a dozen faults of every kind, then the checker.

Runs ``devenv.faults`` on its own servers (its own broker, which it kills and freezes; its own
clusters, which it crashes), the way ``scripts/faults --quick`` does; the full form
(``scripts/faults``, 100 faults and more) is run by hand, its figures go in the notes.
"""

from __future__ import annotations

from pathlib import Path

from devenv.faults import KINDS, Options, run, summary


def test_the_reduced_fault_suite_loses_nothing_and_doubles_nothing(kafka_libs: Path,
                                                                   pg_bindir: Path) -> None:
    lines: list[str] = []
    outcome = run(Options.quick_form(seed=11, kafka_libs=kafka_libs, pg_bindir=pg_bindir,
                                     results_dir=None, out=lines.append))
    text = "\n".join(lines) + summary(outcome)
    assert {f.kind for f in outcome.faults} == set(KINDS), text  # every kind at least once
    assert all(f.recovery_s is not None for f in outcome.faults), text
    assert outcome.recovered_at_end, text
    bad = [c for c in outcome.counts if not c.ok]
    assert bad == [], text
    assert {c.twice for c in outcome.counts if c.table == "public.versioned"} == {0}, text
    assert outcome.unexpected_exits == [] and outcome.stopped_sites == [], text
    assert outcome.ok, text
