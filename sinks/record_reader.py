"""Site-topic records as what they say: a change, a Begin, a Commit, a Position, a tombstone.

One reader for the sink's loop and for ``cdc replay --dead-letters``. A change envelope whose
writer schema was seen before is read by its :class:`~sinks.decoding.EnvelopeDecoder` (the hot
path); any other record's schema is found by its fingerprint (schema topic or registry).
"""

from __future__ import annotations

from typing import Any

from cdc.core.wire.avro import read_fingerprint
from cdc.core import ledger
from cdc.core.config import KafkaConfig
from cdc.core.errors import ApplyError, DecodeError
from cdc.runtime.schema_store import SchemaResolver
from sinks.batcher import SiteStream
from sinks.changes import Change, TableVersion
from sinks.decoding import EnvelopeDecoder, decoder_cache


class UnreadableChange(DecodeError):
    """A record whose schema says it is a change, but whose bytes do not decode: its
    transaction cannot be applied (with dead letters on, it goes there whole)."""


class RecordReader:
    """Decodes records of every site topic; keeps a decoder per change schema."""

    def __init__(self, kafka: KafkaConfig) -> None:
        self.registry = SchemaResolver(kafka)
        self._decoders = decoder_cache()  # by schema fingerprint, bounded

    def change(self, value: bytes) -> tuple[Change, str] | None:
        """The hot path: a change of a known schema, or None (ask :meth:`decode`)."""
        decoder = self._decoders.get(read_fingerprint(value, ""))
        if decoder is None:
            return None
        try:
            return decoder.decode(value)
        except Exception as exc:  # noqa: BLE001 - any failure of these bytes is theirs
            raise UnreadableChange(f"the change record does not decode ({type(exc).__name__}: "
                                   f"{exc})") from exc

    def decode(self, value: bytes, where: str) -> tuple[str, Any]:
        """(kind, payload): ``("change", (change, site))``, or the record's kind and fields
        (``commit_ts`` of a Begin in Unix microseconds)."""
        fast = self.change(value)
        if fast is not None:
            return "change", fast
        fp = read_fingerprint(value, where)
        codec = self.registry.get(fp, where)
        if codec.kind == "change":
            self._decoders[fp] = EnvelopeDecoder(codec, TableVersion.from_codec(codec))
            fast = self.change(value)
            assert fast is not None
            return "change", fast
        rec = codec.decode_body(value)
        if codec.kind == "begin":
            rec["commit_ts"] = ledger.datetime_to_us(rec["commit_ts"])
        return codec.kind, rec

    def feed(self, stream: SiteStream, value: bytes | None, where: str, offset: int) -> None:
        """One record into a site's stream, outside the sink (a dead letter read back)."""
        if value is None:
            stream.other(offset)
            return
        kind, payload = self.decode(value, where)
        if kind == "change":
            change, site = payload
            if site != stream.site_id:
                raise ApplyError(f"{where}: event of site {site!r} in site {stream.site_id!r}'s "
                                 "transaction; refusing it")
            stream.change(change, offset)
        elif kind == "begin":
            stream.begin(payload, offset)
        elif kind == "commit":
            stream.commit(payload, offset)
        else:
            stream.other(offset)
