"""Frame encoding and its failure modes, without a server."""

from __future__ import annotations

import json
import struct

import pytest

from mgte_udf import protocol
from mgte_udf.errors import (
    ERRORS_BY_CODE,
    InputRejected,
    ModelFailed,
    Overloaded,
    ProtocolMismatch,
    ServerError,
    TooLarge,
)


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
    for error in (Overloaded("full", hint="later"), TooLarge("big"), ServerError("boom"), ModelFailed("oom")):
        header = protocol.error_header(error)
        with pytest.raises(type(error)) as raised:
            protocol.raise_for_error(header)
        assert type(raised.value) is type(error)
        assert str(raised.value) == str(error) and raised.value.hint == error.hint
    with pytest.raises(ServerError):
        protocol.raise_for_error({"ok": False, "error": {"code": "from-the-future", "message": "?"}})
    protocol.raise_for_error({"ok": True})


def test_every_error_answer_says_whose_fault_it_is() -> None:
    input_codes = {"bad_request", "too_large", "unsupported"}  # the protocol's docstring names these
    assert input_codes < ERRORS_BY_CODE.keys() and "model_failed" in ERRORS_BY_CODE
    for code, cls in ERRORS_BY_CODE.items():
        error = protocol.error_header(cls("x"))["error"]
        assert error["code"] == code
        assert error["fault"] == ("input" if code in input_codes else "server"), code
        assert cls.input_fault is (code in input_codes), code


def test_response_limits_admit_the_largest_real_answer() -> None:
    texts = ["x", "y"]
    request = {"op": "embed", "texts": texts, "dense": True, "sparse": True, "sparse_ids": True, "dim": None}
    max_json, max_payload = protocol.response_limits(request)
    # Every input cut to MAX_TOKENS distinct tokens of long multi-byte strings (with a control
    # character, which JSON escapes to six bytes), every per-input number at its widest.
    tokens = [f"\x01{i:05d}{'語' * 12}" for i in range(protocol.MAX_TOKENS)]
    header = {"ok": True, "count": 2, "model": "m" * 1000, "tokens": [10**12] * 2, "truncated": [0, 1],
              "dim": protocol.MAX_DIM, "sparse_tokens": [tokens] * 2, "sparse_ids_nnz": [protocol.MAX_TOKENS] * 2,
              "sparse_dimensions": 250048}
    assert len(json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()) <= max_json
    assert max_payload == len(texts) * (4 * protocol.MAX_DIM + 4 * protocol.MAX_TOKENS + 8 * protocol.MAX_TOKENS)
    # Each output that is not asked for adds nothing.
    assert protocol.response_limits({**request, "sparse": False, "sparse_ids": False}) == (
        protocol.RESPONSE_JSON_BASE + 2 * 4 * protocol.MAX_NUMBER_JSON, 2 * 4 * protocol.MAX_DIM)
    assert protocol.response_limits({"op": "rerank", "query": "q", "documents": ["a"] * 3})[1] == 12
    assert protocol.response_limits({"op": "health"}) == (protocol.RESPONSE_JSON_BASE, 0)


def test_unpack_checks_the_payload_length() -> None:
    values, end = protocol.unpack("f", struct.pack("<2f", 1.5, -2.0), 0, 2)
    assert (values.tolist(), end) == ([1.5, -2.0], 8)
    with pytest.raises(ProtocolMismatch, match="too short"):
        protocol.unpack("f", b"\x00" * 7, 0, 2)
