"""The worker protocol's framing (proxy/scf/frames.py): pure, fed in every possible split."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.scf import frames
from proxy.scf.event import MAX_EVENT_BYTES, MAX_RESPONSE_BYTES


def _feed_bytewise(decoder: frames.FrameDecoder, data: bytes) -> list[bytes]:
    out: list[bytes] = []
    for i in range(len(data)):
        out += decoder.feed(data[i:i + 1])
    return out


def test_frame_is_a_4_byte_big_endian_length_then_the_payload() -> None:
    assert frames.encode(b"abc") == b"\x00\x00\x00\x03abc"
    assert frames.encode(b"") == b"\x00\x00\x00\x00"
    assert frames.encode(b"a", b"bc") == b"\x00\x00\x00\x01a\x00\x00\x00\x02bc"


def test_decoder_returns_nothing_until_a_frame_is_complete() -> None:
    decoder = frames.FrameDecoder()
    assert decoder.feed(b"\x00\x00") == []
    assert decoder.feed(b"\x00\x05he") == []
    assert decoder.pending == 6
    assert decoder.feed(b"llo") == [b"hello"]
    assert decoder.pending == 0


def test_decoder_fed_one_byte_at_a_time_gives_every_frame_in_order() -> None:
    payloads = [b'{"request_id":"r1"}', b"", b'{"a":1}' * 100, b"\x00\xff"]
    decoder = frames.FrameDecoder()
    assert _feed_bytewise(decoder, frames.encode(*payloads)) == payloads
    assert decoder.pending == 0


def test_several_frames_in_one_feed_come_out_together() -> None:
    decoder = frames.FrameDecoder()
    assert decoder.feed(frames.encode(b"one", b"two", b"three") + b"\x00") == [
        b"one", b"two", b"three"]
    assert decoder.pending == 1


def test_length_over_the_bound_is_rejected_before_its_payload_arrives() -> None:
    decoder = frames.FrameDecoder(max_frame=10)
    assert decoder.feed(frames.encode(b"x" * 10)) == [b"x" * 10]
    with pytest.raises(frames.FrameError):
        decoder.feed(frames.LENGTH.pack(11))


def test_default_bound_admits_a_6mb_event_with_its_header_and_nothing_far_beyond() -> None:
    decoder = frames.FrameDecoder()
    assert decoder.max_frame == frames.MAX_FRAME_BYTES
    assert frames.MAX_FRAME_BYTES >= MAX_EVENT_BYTES
    assert frames.MAX_FRAME_BYTES - MAX_EVENT_BYTES <= 64 * 1024
    with pytest.raises(frames.FrameError):
        decoder.feed(frames.LENGTH.pack(frames.MAX_FRAME_BYTES + 1))
    with pytest.raises(frames.FrameError):
        decoder.feed(b"\xff\xff\xff\xff")


def test_encoding_a_payload_over_the_bound_raises() -> None:
    with pytest.raises(frames.FrameError):
        frames.encode(b"x" * (frames.MAX_FRAME_BYTES + 1))


def test_limits_agree_with_the_event_codec() -> None:
    # the worker checks results against the same 6 MB quota the event codec enforces
    assert frames.MAX_RESULT_BYTES == MAX_RESPONSE_BYTES
    assert frames.MAX_EVENT_BYTES == MAX_EVENT_BYTES


def test_reply_statuses_are_the_documented_set() -> None:
    assert frames.STATUSES == {"ok", "error", "import_error", "memory", "too_large", "not_json"}


@given(st.lists(st.binary(max_size=300), max_size=8), st.lists(st.integers(1, 50), max_size=40))
def test_any_split_of_any_frames_decodes_to_the_same_payloads(payloads: list[bytes],
                                                             cuts: list[int]) -> None:
    data = frames.encode(*payloads)
    decoder = frames.FrameDecoder()
    out: list[bytes] = []
    pos = 0
    for size in cuts:
        out += decoder.feed(data[pos:pos + size])
        pos += size
    out += decoder.feed(data[pos:])
    assert out == payloads
    assert decoder.pending == 0
