"""Named failpoints: the fault suite makes a daemon crash, fail or stall at an exact place.

Switched on only by the environment, read once at import::

    TRIBUTARY_FAILPOINTS="sink.after_cloud_commit=crash@3,source.after_produce=sleep:2@0.2"
    TRIBUTARY_FAILPOINTS_SEED=7          # the RNG of probability triggers (default 0)

Each entry is ``name=action[@trigger]``:

- actions: ``crash`` (``os._exit(137)``: the process dies on the spot, as under ``kill -9``,
  without flushing or closing anything), ``error`` (raises :class:`FailpointError`, a
  :class:`~cdc.core.errors.ConnectionLost`: the daemon takes its retry path, as after a lost
  server), ``sleep:<seconds>`` (stalls the calling thread);
- triggers: an integer ``N`` fires on the Nth hit only; a number with a point, ``0 < p <= 1``,
  fires on each hit with probability ``p`` (seeded, so a run can be repeated); none fires on
  every hit.

A name that is not in :data:`NAMES` is refused with :class:`FailpointConfigError`: a typo must
not make a fault test pass silently. When the variable is unset, :func:`failpoint` is one dict
lookup.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field

from cdc.core.errors import ConfigError, ConnectionLost

ENV = "TRIBUTARY_FAILPOINTS"
SEED_ENV = "TRIBUTARY_FAILPOINTS_SEED"
CRASH_EXIT = 137  # what a shell reports for a process killed by SIGKILL

#: Every failpoint in the code, with where it is. A new call site adds its name here.
NAMES: dict[str, str] = {
    "source.after_produce": "a transaction's Commit produced, before it may be confirmed to the "
                            "slot (cdc/source/daemon.py)",
    "source.mid_transaction": "each change streamed from the slot, after it was produced "
                              "(cdc/source/daemon.py); with @N, inside a large transaction",
    "initial_copy.in_chunk": "each record of an initial copy chunk, after it was produced "
                             "(cdc/source/initial_copy.py)",
    "initial_copy.read": "an initial copy chunk read from the snapshot, before any of it is "
                         "produced (cdc/source/initial_copy.py)",
    "sink.after_cloud_commit": "the cloud transaction committed (rows, offsets and site progress "
                               "together), before the sink's in-memory bookkeeping "
                               "(sinks/sink.py)",
    "sink.after_ingest": "each record the sink read, after it joined its site's stream, in the "
                         "main thread (sinks/sink.py)",
    "sink.on_assign": "the consumer group assigned partitions (sinks/sink.py)",
    "sink.on_revoke": "the consumer group revoked partitions (sinks/sink.py)",
    "sink.apply_part": "a part of a large transaction handed to the cloud transaction that "
                       "stays open (sinks/sink.py)",
    "sink.in_copy": "rows written into a COPY to the cloud, before it ends (sinks/applier.py)",
}


class FailpointConfigError(ConfigError):
    """``TRIBUTARY_FAILPOINTS`` names an unknown failpoint or cannot be parsed."""


class FailpointError(ConnectionLost):
    """Raised by an ``error`` failpoint; a ConnectionLost so the daemon retries as after an
    outage (the point is to exercise that path from an exact place)."""


@dataclass
class Failpoint:
    """One armed failpoint: what it does and when."""

    name: str
    action: str  # crash | error | sleep
    sleep_s: float = 0.0
    nth: int | None = None
    probability: float | None = None
    rng: random.Random = field(default_factory=random.Random)
    hits: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fires(self) -> bool:
        with self.lock:
            self.hits += 1
            if self.nth is not None:
                return self.hits == self.nth
            if self.probability is not None:
                return self.rng.random() < self.probability
            return True

    def hit(self) -> None:
        if not self.fires():
            return
        if self.action == "crash":
            sys.stderr.write(f"failpoint {self.name}: crash (hit {self.hits})\n")
            sys.stderr.flush()
            os._exit(CRASH_EXIT)
        if self.action == "sleep":
            time.sleep(self.sleep_s)
            return
        raise FailpointError(f"failpoint {self.name}: error injected (hit {self.hits})")


def parse(spec: str, seed: int = 0) -> dict[str, Failpoint]:
    """``TRIBUTARY_FAILPOINTS``'s value -> armed failpoints by name (see the module docstring)."""
    armed: dict[str, Failpoint] = {}
    unknown = []
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        name, eq, rest = entry.partition("=")
        name = name.strip()
        if not eq or not rest.strip():
            raise FailpointConfigError(f"{ENV}: {entry!r} is not name=action[@trigger]")
        if name not in NAMES:
            unknown.append(name)
            continue
        if name in armed:
            raise FailpointConfigError(f"{ENV}: failpoint {name!r} is given twice")
        action, at, trigger = rest.strip().partition("@")
        fp = Failpoint(name, "", rng=random.Random(f"{seed}:{name}"))
        kind, colon, arg = action.partition(":")
        if kind in ("crash", "error") and not colon:
            fp.action = kind
        elif kind == "sleep" and colon:
            fp.action = "sleep"
            fp.sleep_s = _number(arg, entry, "sleep seconds")
            if fp.sleep_s < 0:
                raise FailpointConfigError(f"{ENV}: {entry!r}: sleep seconds must be >= 0")
        else:
            raise FailpointConfigError(f"{ENV}: {entry!r}: the action must be crash, error or "
                                       f"sleep:<seconds>")
        if at:
            if "." in trigger:
                p = _number(trigger, entry, "probability")
                if not 0 < p <= 1:
                    raise FailpointConfigError(f"{ENV}: {entry!r}: a probability is in (0, 1]")
                fp.probability = p
            else:
                try:
                    fp.nth = int(trigger)
                except ValueError:
                    raise FailpointConfigError(
                        f"{ENV}: {entry!r}: the trigger must be a hit number (3) or a "
                        f"probability (0.2)") from None
                if fp.nth < 1:
                    raise FailpointConfigError(f"{ENV}: {entry!r}: hits count from 1")
        armed[name] = fp
    if unknown:
        raise FailpointConfigError(f"{ENV}: unknown failpoint(s) {', '.join(sorted(unknown))}; "
                                   f"known: {', '.join(sorted(NAMES))}")
    return armed


def _number(text: str, entry: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise FailpointConfigError(f"{ENV}: {entry!r}: {what} {text!r} is not a number") from None


def _from_environment() -> dict[str, Failpoint]:
    spec = os.environ.get(ENV, "")
    if not spec.strip():
        return {}
    try:
        seed = int(os.environ.get(SEED_ENV, "0"))
    except ValueError:
        raise FailpointConfigError(f"{SEED_ENV} must be an integer") from None
    return parse(spec, seed)


_ARMED: dict[str, Failpoint] = _from_environment()


def failpoint(name: str) -> None:
    """The named place was reached: fire its failpoint if the environment armed it."""
    fp = _ARMED.get(name)
    if fp is not None:
        fp.hit()


def arm(spec: str, seed: int = 0) -> None:
    """Replace the armed failpoints (unit tests; the daemons only read the environment)."""
    global _ARMED
    _ARMED = parse(spec, seed)


def armed() -> list[str]:
    """Names of the armed failpoints (logged at a daemon's start)."""
    return sorted(_ARMED)
