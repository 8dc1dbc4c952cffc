"""The errors a client can see, each with the SQLSTATE that SQL callers get for it."""

from __future__ import annotations

from typing import ClassVar


class MgteError(Exception):
    """Base class: `str(e)` says what went wrong, `hint` what to do about it."""

    sqlstate: ClassVar[str] = "58000"  # system_error
    code: ClassVar[str] = "internal"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class ServerUnavailable(MgteError):
    """No server at the socket, or the connection broke."""

    sqlstate = "08006"  # connection_failure
    code = "unavailable"


class Timeout(MgteError):
    """The server did not answer within the client's timeout."""

    sqlstate = "57014"  # query_canceled, what statement_timeout raises too
    code = "timeout"


class Overloaded(MgteError):
    """The server's queue is full; retrying later will work."""

    sqlstate = "53000"  # insufficient_resources
    code = "overloaded"


class InputRejected(MgteError):
    """The request itself is wrong: bad types, out-of-range values, empty lists."""

    sqlstate = "22023"  # invalid_parameter_value
    code = "bad_request"


class TooLarge(InputRejected):
    """The request is over one of the server's size limits."""

    sqlstate = "54000"  # program_limit_exceeded
    code = "too_large"


class NotSupported(MgteError):
    """The loaded models cannot do this (e.g. rerank without a reranker)."""

    sqlstate = "0A000"  # feature_not_supported
    code = "unsupported"


class ProtocolMismatch(MgteError):
    """Client and server speak different protocol versions, or the peer is not an mgte server."""

    sqlstate = "08P01"  # protocol_violation
    code = "protocol"


class ShuttingDown(ServerUnavailable):
    """The server is stopping and takes no new work."""

    code = "shutting_down"


class ServerError(MgteError):
    """The server failed while running the model."""

    code = "internal"


ERRORS_BY_CODE: dict[str, type[MgteError]] = {
    cls.code: cls
    for cls in (ServerUnavailable, Timeout, Overloaded, InputRejected, TooLarge, NotSupported,
                ProtocolMismatch, ShuttingDown, ServerError)
}
