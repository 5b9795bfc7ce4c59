"""The guard against a site whose WAL went back (restored without a new timeline)."""

from cdc.source.topic_tail import PublishedTx, wal_went_back

LAST = PublishedTx("7300", 1, "slot", commit_lsn=0x5000, offset=41)


def test_same_server_behind_what_it_published_is_refused() -> None:
    why = wal_went_back(LAST, "7300", 1, 0x4000)
    assert why is not None and "0/5000" in why and "0/4000" in why and "offset 41" in why


def test_normal_restarts_and_new_identities_pass() -> None:
    assert wal_went_back(None, "7300", 1, 0) is None  # empty topic
    assert wal_went_back(LAST, "7300", 1, 0x5000) is None  # caught up
    assert wal_went_back(LAST, "7300", 1, 0x9000) is None  # moved on
    assert wal_went_back(LAST, "7300", 2, 0x100) is None  # new timeline: a new identity
    assert wal_went_back(LAST, "9999", 1, 0x100) is None  # another server
