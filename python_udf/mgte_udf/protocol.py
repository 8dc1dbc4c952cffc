"""The mgte wire protocol, spoken over a Unix stream socket.

Every message is one frame:

    offset  size  field
    0       4     magic b"MGTE"
    4       1     protocol version (PROTOCOL_VERSION)
    5       1     kind: 0 request, 1 response
    6       2     reserved, 0
    8       4     length of the JSON header, bytes (big-endian, like the fields above)
    12      4     length of the binary payload, bytes
    16      ...   JSON header: one UTF-8 object
    ...     ...   payload: little-endian float32 / uint32 arrays whose sizes the header gives

A connection carries one request at a time; the server answers each with one frame.
Requests (the JSON header; requests carry no payload):

    {"op": "health"}
    {"op": "info"}
    {"op": "embed", "texts": [str, ...], "dense": bool, "sparse": bool, "sparse_ids": bool,
     "dim": int | null}
    {"op": "rerank", "query": str, "documents": [str, ...], "sigmoid": bool}

Responses: {"ok": false, "error": {"code", "message", "hint", "fault"}} on failure,
otherwise {"ok": true, ...}. "fault" says whose fault a failure is, for callers that decide
between retrying and giving up: "input" when the request itself is wrong (codes
bad_request, too_large, unsupported: the same request fails again), "server" for every
other code (overloaded, model_failed, internal, ...: the same request may succeed later,
or once the server is fixed). A client maps an unknown code to ServerError.

Every embed and rerank answer has "count", "model" (the id of the model that computed it),
"tokens" (token count of each input before truncation) and "truncated" (indices of inputs
cut to the model's limit). An embed answer also has "dim"; with
"sparse" (lexical weights keyed by token string, the official format) it has
"sparse_tokens", the tokens of each input; with "sparse_ids" (keyed by token id, what a
sparsevec needs) "sparse_ids_nnz", the entries of each input. Its payload: the dense
vectors (count x dim float32), then the weights of all sparse_tokens (float32), then all
sparse ids (uint32) and their weights (float32). A rerank payload is count float32 scores.

Every length read from the socket is bounded before memory is reserved for it. The server
bounds requests by its limits (`mgte info`). A client bounds an answer by what its request
can justify (`response_limits`): per input at most MAX_DIM dense values and MAX_TOKENS
sparse entries (the server refuses to start with a model beyond them), MAX_TOKEN_JSON bytes
of header per sparse token string, MAX_NUMBER_JSON per number, plus RESPONSE_JSON_BASE.
"""

from __future__ import annotations

import json
import struct
import sys
from array import array
from typing import Any

from mgte_udf.errors import ERRORS_BY_CODE, InputRejected, MgteError, ProtocolMismatch, ServerError, TooLarge

PROTOCOL_VERSION = 1
MAGIC = b"MGTE"
REQUEST = 0
RESPONSE = 1
PREFIX = struct.Struct("!4sBBHII")

DEFAULT_SOCKET_PATH = "/run/mgte/mgte.sock"

# numpy dtype strings of the payload arrays, for the server side.
FLOAT32 = "<f4"
UINT32 = "<u4"

_NATIVE_LITTLE_ENDIAN = sys.byteorder == "little"

# What one input can add to an answer (see the module docstring). Generous: they only keep
# a broken or fake server from making a client reserve gigabytes it was never sent.
MAX_TOKENS = 8192  # the longest input an mGTE model reads: its sparse entries at most
MAX_DIM = 8192
MAX_TOKEN_JSON = 256  # one sparse token string: UTF-8, escaped, quoted, and its comma
MAX_NUMBER_JSON = 24  # one integer of a per-input list ("tokens", "truncated", ...) and its comma
RESPONSE_JSON_BASE = 1 << 20  # the rest: the model id, errors, `info`


def encode(kind: int, header: dict[str, Any], payload: bytes = b"") -> bytes:
    body = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return PREFIX.pack(MAGIC, PROTOCOL_VERSION, kind, 0, len(body), len(payload)) + body + payload


def parse_prefix(prefix: bytes, max_json: int, max_payload: int) -> tuple[int, int, int, int]:
    """Returns (version, kind, json_length, payload_length) of a frame's first 16 bytes."""
    magic, version, kind, _, json_length, payload_length = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolMismatch(
            f"not an mgte frame (starts with {magic!r}, expected {MAGIC!r})",
            hint="only mgte clients (mgte.client.Client, the SQL functions) can talk to this socket",
        )
    if version != PROTOCOL_VERSION:
        raise ProtocolMismatch(
            f"protocol version {version} is not supported; this side speaks version {PROTOCOL_VERSION}",
            hint="install the same mgte release for the server and the client (the extension): restart "
                 "`mgte serve` once it is updated, and reconnect after ALTER EXTENSION mgte UPDATE",
        )
    if kind not in (REQUEST, RESPONSE):
        raise ProtocolMismatch(f"unknown frame kind {kind}")
    if json_length > max_json or payload_length > max_payload:
        raise TooLarge(
            f"frame of {json_length + payload_length} bytes is over the limit of {max_json + max_payload}",
            hint="send fewer or shorter texts per request, or raise the server's --max-request-bytes",
        )
    return version, kind, json_length, payload_length


def decode_header(data: bytes) -> dict[str, Any]:
    try:
        header = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputRejected(f"frame header is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise InputRejected(f"frame header must be a JSON object, not {type(header).__name__}")
    return header


def check_unicode(name: str, text: str) -> None:
    """Texts travel as UTF-8, so a lone surrogate cannot be sent (or tokenised)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputRejected(f"{name} is not valid Unicode text (it holds a lone surrogate)") from None


def error_header(error: MgteError) -> dict[str, Any]:
    return {"ok": False, "error": {"code": error.code, "message": str(error), "hint": error.hint,
                                   "fault": "input" if error.input_fault else "server"}}


def response_limits(request: dict[str, Any]) -> tuple[int, int]:
    """The longest JSON header and payload that an answer to `request` can have."""
    inputs = len(request.get("texts") or request.get("documents") or ())
    json_per_input = 4 * MAX_NUMBER_JSON  # "tokens", "truncated", "sparse_ids_nnz", a list's brackets
    payload_per_input = 4  # a rerank score
    if request.get("op") == "embed":
        payload_per_input = (4 * MAX_DIM * bool(request.get("dense", True))
                             + 4 * MAX_TOKENS * bool(request.get("sparse"))
                             + 8 * MAX_TOKENS * bool(request.get("sparse_ids")))
        json_per_input += MAX_TOKENS * MAX_TOKEN_JSON * bool(request.get("sparse"))
    return RESPONSE_JSON_BASE + inputs * json_per_input, inputs * payload_per_input


def raise_for_error(header: dict[str, Any]) -> None:
    if header.get("ok") is True:
        return
    error = header.get("error")
    if not isinstance(error, dict):
        raise ProtocolMismatch(f"malformed response from the server: {header!r}")
    cls = ERRORS_BY_CODE.get(str(error.get("code")), ServerError)
    raise cls(str(error.get("message")), hint=error.get("hint"))


def unpack(typecode: str, payload: bytes | memoryview, offset: int, count: int) -> tuple[array[Any], int]:
    """Reads `count` little-endian values ('f' float32 or 'I' uint32) at `offset`."""
    values = array(typecode)
    end = offset + count * values.itemsize
    if end > len(payload):
        raise ProtocolMismatch(f"response payload too short: need {end} bytes, have {len(payload)}")
    values.frombytes(payload[offset:end])
    if not _NATIVE_LITTLE_ENDIAN:
        values.byteswap()
    return values, end
