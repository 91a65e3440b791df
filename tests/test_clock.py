"""Pure logic: timestamps and time-ordered ids."""

from __future__ import annotations

import random
import uuid

from google.protobuf.timestamp_pb2 import Timestamp

from cursor_grpc.clock import iso_from_ns, iso_to_ns, new_id, now_iso, timestamp_from_iso


def test_timestamp_text_round_trips_and_matches_protobuf_parser() -> None:
    rng = random.Random(7)
    for _ in range(5000):
        ns = rng.randrange(0, 253402300799 * 10**9) // 1_000_000 * 1_000_000
        text = iso_from_ns(ns)
        assert len(text) == 24
        assert iso_to_ns(text) == ns
        reference = Timestamp()
        reference.FromJsonString(text)
        assert timestamp_from_iso(text) == reference


def test_timestamp_text_sorts_like_time() -> None:
    rng = random.Random(3)
    values = [rng.randrange(0, 4 * 10**18) for _ in range(2000)]
    texts = [iso_from_ns(v) for v in values]
    assert sorted(texts) == [iso_from_ns(v) for v in sorted(values)]


def test_empty_time_stays_empty() -> None:
    assert timestamp_from_iso(None) is None
    assert timestamp_from_iso("") is None
    assert now_iso().endswith("Z")


def test_uuid7_ids_are_valid_and_strictly_increasing() -> None:
    # One at a time and in bulk, interleaved: one increasing sequence.
    ids = [new_id() for _ in range(5000)] + new_id.many(10000) + [new_id() for _ in range(5000)] + new_id.many(1)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    for text in ids[::200]:
        parsed = uuid.UUID(text)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
