"""The public Python client: `from mgte.client import Client`.

It is the same standard-library client that the SQL functions use, so it also works
outside the virtualenv that holds the server.
"""

from mgte_udf.client import Client, Encoded, Scored, TruncationWarning
from mgte_udf.errors import (
    InputRejected,
    MgteError,
    ModelFailed,
    NotSupported,
    Overloaded,
    ProtocolMismatch,
    ServerError,
    ServerUnavailable,
    Timeout,
    TooLarge,
)

__all__ = [
    "Client", "Encoded", "InputRejected", "MgteError", "ModelFailed", "NotSupported", "Overloaded",
    "ProtocolMismatch", "Scored", "ServerError", "ServerUnavailable", "Timeout", "TooLarge", "TruncationWarning",
]
