"""The errors a client can see, each with the SQLSTATE that SQL callers get for it.

`input_fault` tells a caller what to do with a failed request without listing classes:
True when the request itself is wrong (sending it again fails again: report it, or park
it as a dead letter), False when the server or the connection is at fault (retry later).
"""

from __future__ import annotations

from typing import ClassVar


class MgteError(Exception):
    """Base class: `str(e)` says what went wrong, `hint` what to do about it."""

    sqlstate: ClassVar[str] = "58000"  # system_error
    code: ClassVar[str] = "internal"
    input_fault: ClassVar[bool] = False

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
    input_fault = True


class TooLarge(InputRejected):
    """The request is over one of the server's size limits."""

    sqlstate = "54000"  # program_limit_exceeded
    code = "too_large"


class NotSupported(MgteError):
    """The loaded models cannot do this (e.g. rerank without a reranker)."""

    sqlstate = "0A000"  # feature_not_supported
    code = "unsupported"
    input_fault = True


class ProtocolMismatch(MgteError):
    """Client and server speak different protocol versions, or the peer is not an mgte server."""

    sqlstate = "08P01"  # protocol_violation
    code = "protocol"


class ShuttingDown(ServerUnavailable):
    """The server is stopping and takes no new work."""

    code = "shutting_down"


class ServerError(MgteError):
    """The server failed unexpectedly while handling the request (a bug in mgte)."""

    code = "internal"


class ModelFailed(ServerError):
    """The model raised while running a batch (a device error, out of memory): the request
    may succeed when sent again, alone or once the server has memory to spare."""

    code = "model_failed"


class ModelMismatch(MgteError):
    """Raised on this side, never sent: the served model is not the one whose vectors a table
    holds, and vectors of two models must not be mixed."""

    sqlstate = "55000"  # object_not_in_prerequisite_state
    code = "model_mismatch"


ERRORS_BY_CODE: dict[str, type[MgteError]] = {
    cls.code: cls
    for cls in (ServerUnavailable, Timeout, Overloaded, InputRejected, TooLarge, NotSupported,
                ProtocolMismatch, ShuttingDown, ServerError, ModelFailed)
}
