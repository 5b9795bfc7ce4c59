"""PostgreSQL log sequence numbers (LSNs): 64-bit WAL positions written ``X/Y`` in upper-case hex."""

from __future__ import annotations

LSN_MAX = (1 << 64) - 1
_HEX = frozenset("0123456789abcdefABCDEF")


def format_lsn(lsn: int) -> str:
    """Format an LSN the way PostgreSQL does (``pg_lsn`` output): ``16/B374D848``."""
    if not isinstance(lsn, int) or isinstance(lsn, bool) or not 0 <= lsn <= LSN_MAX:
        raise ValueError(f"LSN must be an integer in 0..2**64-1, got {lsn!r}")
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """Parse ``X/Y`` (1 to 8 hex digits on each side, any case) into an integer LSN."""
    high, sep, low = text.partition("/") if isinstance(text, str) else ("", "", "")
    if (
        not sep
        or not 1 <= len(high) <= 8
        or not 1 <= len(low) <= 8
        or not _HEX.issuperset(high)
        or not _HEX.issuperset(low)
    ):
        raise ValueError(f"invalid LSN {text!r}: expected X/Y with 1-8 hex digits on each side, e.g. '16/B374D848'")
    return (int(high, 16) << 32) | int(low, 16)
