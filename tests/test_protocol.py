"""Frame encoding and its failure modes, without a server."""

from __future__ import annotations

import struct

import pytest

from mgte_udf import protocol
from mgte_udf.errors import InputRejected, Overloaded, ProtocolMismatch, ServerError, TooLarge


def test_frame_roundtrip() -> None:
    frame = protocol.encode(protocol.REQUEST, {"op": "embed", "texts": ["日本語", "x"]}, b"\x00\x01")
    version, kind, json_length, payload_length = protocol.parse_prefix(frame[:16], 1 << 20, 1 << 20)
    assert (version, kind, payload_length) == (protocol.PROTOCOL_VERSION, protocol.REQUEST, 2)
    assert protocol.decode_header(frame[16:16 + json_length]) == {"op": "embed", "texts": ["日本語", "x"]}
    assert frame[16 + json_length:] == b"\x00\x01"


def test_prefix_rejections() -> None:
    with pytest.raises(ProtocolMismatch, match="not an mgte frame"):
        protocol.parse_prefix(b"GET / HTTP/1.1\r\n", 100, 100)
    with pytest.raises(ProtocolMismatch, match="version 9"):
        protocol.parse_prefix(struct.pack("!4sBBHII", b"MGTE", 9, 0, 0, 2, 0), 100, 100)
    with pytest.raises(ProtocolMismatch, match="kind 7"):
        protocol.parse_prefix(struct.pack("!4sBBHII", b"MGTE", 1, 7, 0, 2, 0), 100, 100)
    with pytest.raises(TooLarge):
        protocol.parse_prefix(struct.pack("!4sBBHII", b"MGTE", 1, 0, 0, 101, 0), 100, 100)


@pytest.mark.parametrize("body", [b"\xff\xfe", b"[1, 2]", b"{not json", b"[" * 100000])
def test_header_must_be_a_json_object(body: bytes) -> None:
    with pytest.raises(InputRejected):
        protocol.decode_header(body)


def test_error_replies_become_the_matching_exception() -> None:
    for error in (Overloaded("full", hint="later"), TooLarge("big"), ServerError("boom")):
        header = protocol.error_header(error)
        with pytest.raises(type(error)) as raised:
            protocol.raise_for_error(header)
        assert str(raised.value) == str(error) and raised.value.hint == error.hint
    with pytest.raises(ServerError):
        protocol.raise_for_error({"ok": False, "error": {"code": "from-the-future", "message": "?"}})
    protocol.raise_for_error({"ok": True})


def test_unpack_checks_the_payload_length() -> None:
    values, end = protocol.unpack("f", struct.pack("<2f", 1.5, -2.0), 0, 2)
    assert (values.tolist(), end) == ([1.5, -2.0], 8)
    with pytest.raises(ProtocolMismatch, match="too short"):
        protocol.unpack("f", b"\x00" * 7, 0, 2)
