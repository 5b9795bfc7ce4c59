"""Pure sink logic: a site's record stream as whole transactions, and changes as apply steps.

:class:`SiteStream` follows one site topic partition: Begin, changes, Commit. It skips
transactions the cloud has already applied (guarantee 3), notices a transaction cut short by a
source restart (the source streams it again from its Begin), and checks each Commit's change
count so a missing record stops the site instead of vanishing.

:func:`plan` turns an ordered list of changes into steps for the applier: consecutive changes
of one table and one kind become one set-based statement. Within an upsert or delete step the
last change of a key wins, which is what applying them one by one would leave; steps keep
their order, so foreign keys and other constraints see what the site saw. A table without a key
is a multiset: its changes are never merged by value (equal rows are distinct rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cdc.core.errors import ApplyError, ProgressError
from cdc.core.ledger import FROM_BEGINNING, AppliedTx, Identity
from sinks.changes import Change, TableVersion

#: what to do when the cloud cannot be brought to a site's state from its topic
COPY_AGAIN = ("Copy the site again: drop its slot at the site, run `cdc sink remove-site` in "
              "the cloud, start the source")


@dataclass(slots=True)
class _OpenTx:
    identity: Identity
    xid: int
    commit_lsn: int
    commit_ts: int
    skip: bool
    only: frozenset[str] | None = None  # a replay of chosen tables: apply only their changes
    held: bool = False  # not linked to what the cloud holds: a delivery gap before it
    first_offset: int = -1  # the offset of its Begin
    dead: str | None = None  # why the cloud cannot apply it: it goes to the dead letters
    changes: list[Change] = field(default_factory=list)
    count: int = 0  # changes seen, including ones already handed out (big transactions)
    tables: set[str] = field(default_factory=set)  # the site tables it changes


@dataclass(frozen=True, slots=True)
class DeadTx:
    """A whole site transaction the cloud cannot apply: records ``first_offset`` (its Begin)
    to ``last_offset`` (its Commit) of the site topic go to the dead-letter topic."""

    first_offset: int
    last_offset: int
    tx: AppliedTx
    tables: tuple[str, ...]
    reason: str


class SiteStream:
    """The state of one site's partition between cloud commits."""

    def __init__(self, site_id: str, applied: AppliedTx | None,
                 replay: tuple[int, frozenset[str] | None] | None = None,
                 earlier: dict[Identity, int] | None = None) -> None:
        self.site_id = site_id
        # identities the site's LSNs had before (a new timeline, slot or server), each with the
        # last commit LSN applied under it: a replay that reads them again must skip them
        self.earlier: dict[Identity, int] = dict(earlier or {})
        # cdc replay --reapply: transactions up to this commit LSN are applied again (only the
        # chosen tables' changes when a set is given), though the cloud has them
        self.replay_until, self.replay_tables = replay if replay else (None, None)
        self.had_replay = replay is not None  # its row in tributary.replays is still to delete
        self.applied = applied  # what the cloud holds (committed)
        self.open: _OpenTx | None = None
        self.done: list[Change] = []  # changes of complete transactions, not yet applied
        self.done_tx: AppliedTx | None = None  # last complete transaction, not yet handed out
        self.inflight_tx: AppliedTx | None = None  # handed out, its cloud commit not yet seen
        self.next_offset: int | None = None  # offset to resume from after the last boundary
        # the offset the cloud holds for this partition once what was handed out commits: what
        # the next cloud transaction checks it still holds (the fence against other replicas)
        self.cloud_offset = FROM_BEGINNING
        self.expect_offset: int | None = None  # the first record to read (see first_record)
        self.skipped = 0  # transactions skipped as already applied
        # transactions held back since the last applied one: the one before them never arrived
        # whole (a delivery gap); the source sends it again, then they follow
        self.held = 0
        self.done_commit_ts: list[int] = []  # site commit times (us) of the done transactions
        self.site_lsn: int | None = None  # the site server's WAL position (Position records)
        self.done_first_offset: int | None = None  # the Begin of the first done transaction
        self.done_count = 0  # complete transactions in ``done``
        self.done_tables: set[str] = set()  # the site tables they change
        self.dead: DeadTx | None = None  # a complete transaction for the dead letters
        # after a failed batch of several transactions (dead letters on): until the stream is
        # past this offset again, each transaction is applied alone, so one that fails is known
        self.careful_until: int | None = None
        self.read_offset = -1  # the last offset read

    def resume_at(self, offset: int) -> None:
        """The cloud holds this partition up to ``offset`` (FROM_BEGINNING: nothing yet)."""
        self.cloud_offset = offset
        self.expect_offset = offset if offset >= 0 else None

    def first_record(self, offset: int) -> None:
        """The first record read must be the one the cloud resumes at: a consumer moves past
        records Kafka already deleted (retention) without a word, and their changes would never
        reach the cloud."""
        expected, self.expect_offset = self.expect_offset, None
        if expected is not None and offset != expected:
            raise ProgressError(
                f"site {self.site_id}: the cloud resumes at offset {expected} of its topic, but "
                f"the first record Kafka has is at offset {offset}: records {expected}.."
                f"{offset - 1} were deleted (retention) before the sink applied them, and their "
                f"changes never reached the cloud. {COPY_AGAIN}; keep the topic's retention "
                "longer than the sink may be away")

    @property
    def last_tx(self) -> AppliedTx | None:
        return self.done_tx or self.inflight_tx or self.applied

    def begin(self, rec: dict[str, Any], offset: int) -> bool:
        """A Begin record. Returns True when it cut short an open transaction."""
        cut = self.open is not None
        identity = Identity(rec["system_id"], rec["timeline"], rec["slot"])
        last = self.last_tx
        # an initial-copy chunk (xid 0, cdc.source.initial_copy) shares its LSN with the chunks before
        # it: skipped only behind a later transaction
        skip = (last is not None and last.identity == identity
                and (rec["commit_lsn"] < last.commit_lsn
                     or (rec["commit_lsn"] == last.commit_lsn and rec["xid"] != 0)))
        only = None
        held = False
        if self.replay_until is not None and rec["commit_lsn"] <= self.replay_until:
            skip, only = False, self.replay_tables
        elif last is not None and last.identity != identity and identity in self.earlier:
            skip = self._earlier_identity(rec, identity, last)
        elif not skip and last is not None and last.identity == identity and rec["xid"] != 0:
            held = not self._linked(rec, last)
        self.open = _OpenTx(identity, rec["xid"], rec["commit_lsn"], rec["commit_ts"],
                            skip or held, only, held, offset)
        if skip:
            self.skipped += 1
        self.held = self.held + 1 if held else 0
        return cut

    def _earlier_identity(self, rec: dict[str, Any], identity: Identity,
                          last: AppliedTx) -> bool:
        """A transaction of an identity the site had before its current one: applied already
        when at or below the last commit applied under it (a replay reads it again), so it is
        skipped; a new one means that identity came back (two sources, one site id)."""
        if rec["commit_lsn"] <= self.earlier[identity]:
            return True
        if rec.get("slot_created"):
            return False  # a slot of that name made anew: a new start, above the old one
        raise ProgressError(
            f"site {self.site_id}: transaction xid {rec['xid']} commit LSN {rec['commit_lsn']:X}"
            f" of system {identity.system_id}, timeline {identity.timeline}, slot "
            f"{identity.slot}, which the site left for system {last.identity.system_id}, "
            f"timeline {last.identity.timeline}, slot {last.identity.slot}: two sources write "
            "this site's topic (one site id in two configs?); stop the one that should not")

    def _linked(self, rec: dict[str, Any], last: AppliedTx) -> bool:
        """Whether a transaction the cloud lacks may be applied after ``last``: its Begin's link
        (the end LSN of the transaction before it in its source session) must be ``last``'s end.

        Otherwise one in between never arrived whole: librdkafka dropped timed-out records and
        delivered later ones, and the source, seeing the error, streams again from the slot's
        confirmed point, which cannot be past the missing one. Applying this one now and
        skipping the missing one later as "older" would lose it; so it is held (not applied)
        until the source's next session brings both again. A session's first transaction links
        to where the session started: below ``last`` while the cloud lacks it, the site's LSNs
        went backwards. Records of sources without the link are not checked.
        """
        prev = rec.get("prev_end_lsn")
        if prev is None or prev == last.end_lsn:
            return True
        if not rec.get("session_first"):
            return False
        if prev < last.end_lsn:
            raise ProgressError(
                f"site {self.site_id}: a source session that starts at {prev:X} (system "
                f"{last.identity.system_id}, timeline {last.identity.timeline}, slot "
                f"{last.identity.slot}) sends transaction xid {rec['xid']} commit LSN "
                f"{rec['commit_lsn']:X}, which the cloud lacks, though the cloud applied up to "
                f"{last.end_lsn:X}: the site's LSNs went backwards (a site restored from a backup "
                f"or a slot created again). {COPY_AGAIN}")
        if rec.get("slot_created"):
            raise ProgressError(
                f"site {self.site_id}: its slot {last.identity.slot} was created again at "
                f"{prev:X}, after the cloud applied up to {last.end_lsn:X}: the site's changes "
                f"in between never reached the cloud. {COPY_AGAIN}")
        return True  # the slot was confirmed past the last transaction while the site was idle

    def change(self, change: Change, offset: int) -> bool:
        """A change record; False when it belongs to a skipped transaction."""
        tx = self.open
        if tx is None:
            raise ApplyError(f"site {self.site_id}: change of {change.version.qualified} at "
                             f"offset {offset} outside a transaction (no Begin before it)")
        tx.count += 1
        if tx.skip or tx.dead is not None or (
                tx.only is not None and change.version.qualified not in tx.only):
            if tx.dead is not None:
                tx.tables.add(change.version.qualified)
            return False
        tx.changes.append(change)
        tx.tables.add(change.version.qualified)
        return True

    def kill_open(self, reason: str) -> None:
        """The open transaction cannot be applied: its changes are dropped as they come and at
        its Commit it becomes :attr:`dead`, for the dead-letter topic (kept whole)."""
        assert self.open is not None
        self.open.dead = reason
        self.open.changes = []

    def unreadable_change(self, reason: str) -> None:
        """A change record of the open transaction does not decode: the transaction goes to
        the dead letters (a skipped one, applied already or held back, needs nothing)."""
        assert self.open is not None
        self.open.count += 1
        if not self.open.skip and self.open.dead is None:
            self.kill_open(reason)

    def commit(self, rec: dict[str, Any], offset: int) -> None:
        tx = self.open
        if tx is None or tx.commit_lsn != rec["commit_lsn"]:
            raise ApplyError(f"site {self.site_id}: Commit of xid {rec['xid']} at offset {offset} "
                             "without its Begin")
        if tx.count != rec["changes"]:
            raise ApplyError(
                f"site {self.site_id}: transaction xid {rec['xid']} commit LSN "
                f"{rec['commit_lsn']:X} has {tx.count} change records on the topic, its Commit "
                f"says {rec['changes']}: records are missing")
        self.open = None
        if self.replay_until is not None and tx.commit_lsn >= self.replay_until:
            self.replay_until = self.replay_tables = None  # the replay has caught up
        applied = AppliedTx(tx.identity, tx.xid, tx.commit_lsn, rec["end_lsn"], tx.commit_ts)
        if not tx.skip:
            before = self.last_tx
            if before is not None and before.identity != tx.identity:
                self.earlier[before.identity] = before.commit_lsn
        if tx.dead is not None:  # the sink sends it to the dead letters, after what is done
            self.dead = DeadTx(tx.first_offset, offset, applied, tuple(sorted(tx.tables)),
                               tx.dead)
            return
        self.next_offset = offset + 1
        if not tx.skip:
            if self.done_first_offset is None:
                self.done_first_offset = tx.first_offset
            self.done_count += 1
            self.done_tables |= tx.tables
            self.done.extend(tx.changes)
            self.done_tx = applied
            self.done_commit_ts.append(tx.commit_ts)

    def other(self, offset: int) -> None:
        """A record that changes nothing (tombstone): a boundary when no transaction is open."""
        if self.open is None:
            self.next_offset = offset + 1

    def take_open(self) -> list[Change]:
        """Hand out the open transaction's changes so far (a big transaction, applied in parts)."""
        assert self.open is not None
        changes, self.open.changes = self.open.changes, []
        return changes

    def take_done(self) -> tuple[list[Change], AppliedTx | None, int | None]:
        """Hand out the complete transactions: their changes, the last one, the resume offset."""
        changes, tx, offset = self.done, self.done_tx, self.next_offset
        self.done, self.done_tx, self.next_offset = [], None, None
        self.done_first_offset, self.done_count, self.done_tables = None, 0, set()
        if offset is not None:
            self.cloud_offset = offset
        self.done_commit_ts = []  # read by the sink's metrics before this call
        if tx is not None:
            self.inflight_tx = tx
        return changes, tx, offset

    def buried(self, dead: DeadTx) -> None:
        """The cloud committed the dead letter ``dead`` and moved past it."""
        self.dead = None
        self.applied = dead.tx
        self.cloud_offset = dead.last_offset + 1

    def committed(self, tx: AppliedTx | None) -> None:
        """The cloud committed what a take_done handed out (``tx`` its last transaction)."""
        if tx is not None:
            self.applied = tx
            if self.inflight_tx is tx:
                self.inflight_tx = None

    @property
    def pending(self) -> int:
        return len(self.done) + (len(self.open.changes) if self.open else 0)


# -- planning -----------------------------------------------------------------------------------

@dataclass(slots=True)
class Upsert:
    version: TableVersion
    rows: dict[tuple, dict[str, Any]]
    updates: bool = False  # holds an update (not only inserts and snapshot rows)


@dataclass(slots=True)
class Delete:
    version: TableVersion
    keys: dict[tuple, dict[str, Any]]


@dataclass(slots=True)
class Patch:
    """Update only the sent columns of one row found by ``old_key`` (unchanged TOAST kept)."""

    version: TableVersion
    old_key: dict[str, Any]
    row: dict[str, Any]
    fields: tuple[str, ...]


@dataclass(slots=True)
class Truncate:
    """A site's TRUNCATE: its rows of the table; of a TimescaleDB chunk, only those whose time
    column lies in the chunk's range (``range``: field, start or None, end or None)."""

    version: TableVersion
    range: tuple[str, Any, Any] | None = None


def chunk_range(ch: Change) -> tuple[str, Any, Any] | None:
    """The time range a truncate event carries (a chunk's), or None (the whole table): the
    one field set in its ``before`` (start) or ``after`` (end) row."""
    rows = [r for r in (ch.before, ch.after) if r]
    fields = {f for r in rows for f, v in r.items() if v is not None}
    if not fields:
        return None
    if len(fields) != 1:
        raise ApplyError(f"{ch.version.qualified}: truncate event bounded by several columns "
                         f"({', '.join(sorted(fields))})")
    field_ = fields.pop()
    return (field_, (ch.before or {}).get(field_), (ch.after or {}).get(field_))


# -- keyless tables (REPLICA IDENTITY FULL, no primary key): the table is a multiset ------------

@dataclass(slots=True)
class Append:
    """Rows added to a keyless table: each one is a row more, equal rows included."""

    version: TableVersion
    rows: list[dict[str, Any]]


@dataclass(slots=True)
class RemoveOne:
    """Each before-image removes exactly one equal row of a keyless table (as PostgreSQL's own
    subscriber does): two equal rows and one DELETE leave one."""

    version: TableVersion
    rows: list[dict[str, Any]]


@dataclass(slots=True)
class ChangeOne:
    """Each (before, after) pair changes exactly one row equal to ``before``; only ``fields``
    are set (the others were unchanged TOAST values)."""

    version: TableVersion
    pairs: list[tuple[dict[str, Any], dict[str, Any]]]
    fields: tuple[str, ...]


Step = Upsert | Delete | Patch | Truncate | Append | RemoveOne | ChangeOne


def _run(last: Step | None, steps: list[Step], kind: type[Append] | type[RemoveOne],
         version: TableVersion) -> Append | RemoveOne:
    """The open run of ``kind`` for this table version, or a new one."""
    if type(last) is kind and last.version is version:
        return last  # type: ignore[return-value]
    step = kind(version, [])
    steps.append(step)
    return step


def _plan_keyless(ch: Change, last: Step | None, steps: list[Step]) -> Step:
    """The step of one change of a keyless table: in order, runs of one kind merged."""
    version, op = ch.version, ch.op
    if op in ("c", "r", "d"):
        row = ch.after if op != "d" else ch.before
        assert row is not None
        run = _run(last, steps, RemoveOne if op == "d" else Append, version)
        run.rows.append(row)
        return run
    if op == "u":
        after = ch.after
        assert after is not None
        if ch.before is None:
            raise ApplyError(f"{version.qualified}: update of a table without a key carries no "
                             "before-image (REPLICA IDENTITY FULL is needed)")
        fields = tuple(f for f in after if f not in ch.unchanged)
        if not (type(last) is ChangeOne and last.version is version and last.fields == fields):
            last = ChangeOne(version, [], fields)
            steps.append(last)
        last.pairs.append((ch.before, after))
        return last
    if op == "t":
        steps.append(Truncate(version, chunk_range(ch)))
        return steps[-1]
    raise ApplyError(f"{version.qualified}: unknown op {op!r}")


def _key(version: TableVersion, row: dict[str, Any]) -> tuple:
    return version.key_of(row)


def plan(changes: list[Change]) -> list[Step]:
    """Ordered apply steps for ordered changes (see the module docstring)."""
    steps: list[Step] = []
    last: Step | None = None
    for ch in changes:
        version = ch.version
        if version.keyless:
            last = _plan_keyless(ch, last, steps)
            continue
        op = ch.op
        if op in ("c", "r", "u"):
            after = ch.after
            assert after is not None
            key = _key(version, after)
            old_key = _key(version, ch.before) if ch.before is not None else key
            if ch.unchanged:
                if (old_key == key and type(last) is Upsert and last.version is version
                        and key in last.rows):
                    merged = dict(last.rows[key])
                    for f, v in after.items():
                        if f not in ch.unchanged:
                            merged[f] = v
                    last.rows[key] = merged
                    continue
                sent = tuple(f for f in after if f not in ch.unchanged)
                assert ch.before is not None or old_key == key
                last = Patch(version, {c.field: v for c, v in zip(version.key_columns, old_key)},
                             after, sent)
                steps.append(last)
                continue
            if old_key != key:
                if not (type(last) is Delete and last.version is version):
                    last = Delete(version, {})
                    steps.append(last)
                last.keys[old_key] = {c.field: v for c, v in zip(version.key_columns, old_key)}
            if not (type(last) is Upsert and last.version is version):
                last = Upsert(version, {})
                steps.append(last)
            last.rows.pop(key, None)  # keep the order of the last write
            last.rows[key] = after
            if op == "u":
                last.updates = True
        elif op == "d":
            before = ch.before
            assert before is not None
            key = _key(version, before)
            if type(last) is Upsert and last.version is version and key in last.rows:
                # deleted within the same run: the earlier upsert must not resurrect it
                del last.rows[key]
            if not (type(last) is Delete and last.version is version):
                last = Delete(version, {})
                steps.append(last)
            last.keys[key] = {c.field: before[c.field] for c in version.key_columns}
        elif op == "t":
            last = Truncate(version, chunk_range(ch))
            steps.append(last)
        else:
            raise ApplyError(f"{version.qualified}: unknown op {op!r}")
    return [s for s in steps if not (type(s) is Upsert and not s.rows)]
