"""Typed errors.

Every failed call raises a `SwitchyardError` subclass chosen by the gRPC code
(`InvalidArgumentError`, `NotFoundError`, ...). It carries the server's
message and the `google.rpc.BadRequest` field violations (and
`PreconditionFailure`, `RetryInfo`, `ErrorInfo` details) that the server puts
in the `grpc-status-details-bin` trailer. Bad input the client can see itself
(a payload that is not a dict, an unknown task type, a malformed duration)
raises the same `InvalidArgumentError`, with the field named the way the
server names it, before anything is sent.

Worker handlers raise `RetryableError` or `FatalError` to say what happens
next (any other exception is a retryable failure).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type

import grpc

__all__ = [
    "FieldViolation",
    "PreconditionViolation",
    "SwitchyardError",
    "CancelledError",
    "UnknownError",
    "InvalidArgumentError",
    "DeadlineExceededError",
    "NotFoundError",
    "AlreadyExistsError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "FailedPreconditionError",
    "AbortedError",
    "OutOfRangeError",
    "UnimplementedError",
    "InternalError",
    "UnavailableError",
    "DataLossError",
    "UnauthenticatedError",
    "RetryableError",
    "FatalError",
    "NonRetryableError",
]

_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request, as the server names it (for example
    `options.attempts`)."""

    field: str
    description: str


@dataclass(frozen=True)
class PreconditionViolation:
    """One `google.rpc.PreconditionFailure` violation."""

    type: str
    subject: str
    description: str


class SwitchyardError(Exception):
    """A call to Switchyard failed. `code` is the gRPC code's name
    (`"INVALID_ARGUMENT"`), `status_code` the `grpc.StatusCode`."""

    #: The code of this class (subclasses set it).
    status_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        details: str,
        *,
        status_code: Optional[grpc.StatusCode] = None,
        field_violations: Sequence[FieldViolation] = (),
        precondition_violations: Sequence[PreconditionViolation] = (),
        retry_delay: Optional[timedelta] = None,
        error_info: Optional[Dict[str, Any]] = None,
        method: Optional[str] = None,
        trailing_metadata: Sequence[Tuple[str, Any]] = (),
    ) -> None:
        if status_code is not None:
            self.status_code = status_code
        self.details = details
        self.field_violations: List[FieldViolation] = list(field_violations)
        self.precondition_violations: List[PreconditionViolation] = list(precondition_violations)
        self.retry_delay = retry_delay
        self.error_info = error_info
        self.method = method
        self.trailing_metadata = tuple(trailing_metadata)
        text = details or "; ".join(f"{v.field}: {v.description}" for v in self.field_violations) or "no message"
        super().__init__(f"{self.code}: {text}")

    @property
    def code(self) -> str:
        """The gRPC code by name, for example `NOT_FOUND`."""
        return str(self.status_code.name)

    @property
    def fields(self) -> Dict[str, str]:
        """The field violations as `{field: description}`."""
        return {v.field: v.description for v in self.field_violations}

    @property
    def transient(self) -> bool:
        """Whether the same call may succeed later (unreachable, draining,
        overloaded)."""
        return self.status_code in _TRANSIENT


class CancelledError(SwitchyardError):
    """CANCELLED: the call was cancelled (by the client)."""

    status_code = grpc.StatusCode.CANCELLED


class UnknownError(SwitchyardError):
    """UNKNOWN."""

    status_code = grpc.StatusCode.UNKNOWN


class InvalidArgumentError(SwitchyardError):
    """INVALID_ARGUMENT: a bad request; `field_violations` name the fields."""

    status_code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceededError(SwitchyardError):
    """DEADLINE_EXCEEDED: the call's deadline passed."""

    status_code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFoundError(SwitchyardError):
    """NOT_FOUND: an unknown task id."""

    status_code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(SwitchyardError):
    """ALREADY_EXISTS."""

    status_code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDeniedError(SwitchyardError):
    """PERMISSION_DENIED."""

    status_code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhaustedError(SwitchyardError):
    """RESOURCE_EXHAUSTED: a limit was reached."""

    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPreconditionError(SwitchyardError):
    """FAILED_PRECONDITION: the task's state (or the server's executors) does
    not allow the operation."""

    status_code = grpc.StatusCode.FAILED_PRECONDITION


class AbortedError(SwitchyardError):
    """ABORTED."""

    status_code = grpc.StatusCode.ABORTED


class OutOfRangeError(SwitchyardError):
    """OUT_OF_RANGE."""

    status_code = grpc.StatusCode.OUT_OF_RANGE


class UnimplementedError(SwitchyardError):
    """UNIMPLEMENTED: the server does not offer this call."""

    status_code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(SwitchyardError):
    """INTERNAL."""

    status_code = grpc.StatusCode.INTERNAL


class UnavailableError(SwitchyardError):
    """UNAVAILABLE: the server cannot be reached or is draining."""

    status_code = grpc.StatusCode.UNAVAILABLE


class DataLossError(SwitchyardError):
    """DATA_LOSS."""

    status_code = grpc.StatusCode.DATA_LOSS


class UnauthenticatedError(SwitchyardError):
    """UNAUTHENTICATED."""

    status_code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: Dict[grpc.StatusCode, Type[SwitchyardError]] = {
    cls.status_code: cls
    for cls in (
        CancelledError,
        UnknownError,
        InvalidArgumentError,
        DeadlineExceededError,
        NotFoundError,
        AlreadyExistsError,
        PermissionDeniedError,
        ResourceExhaustedError,
        FailedPreconditionError,
        AbortedError,
        OutOfRangeError,
        UnimplementedError,
        InternalError,
        UnavailableError,
        DataLossError,
        UnauthenticatedError,
    )
}

_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)


def error_class(code: grpc.StatusCode) -> Type[SwitchyardError]:
    """The `SwitchyardError` subclass of a gRPC code."""
    return _BY_CODE.get(code, SwitchyardError)


def invalid_argument(field: str, description: str, method: Optional[str] = None) -> InvalidArgumentError:
    """A client-side INVALID_ARGUMENT with one field violation, shaped like
    the server's."""
    return InvalidArgumentError(
        f"{field}: {description}",
        field_violations=[FieldViolation(field, description)],
        method=method,
    )


def from_rpc_error(err: grpc.RpcError, method: Optional[str] = None) -> SwitchyardError:
    """Turns a grpc error into the matching `SwitchyardError`, decoding the
    `google.rpc.Status` details from `grpc-status-details-bin`."""
    code_fn = getattr(err, "code", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    if code is None:
        code = grpc.StatusCode.UNKNOWN
    details_fn = getattr(err, "details", None)
    details = (details_fn() if callable(details_fn) else None) or ""
    trailers_fn = getattr(err, "trailing_metadata", None)
    trailers: Sequence[Tuple[str, Any]] = ()
    if callable(trailers_fn):
        trailers = tuple(trailers_fn() or ())
    fields: List[FieldViolation] = []
    preconditions: List[PreconditionViolation] = []
    retry_delay: Optional[timedelta] = None
    info: Optional[Dict[str, Any]] = None
    for key, value in trailers:
        if key != _DETAILS_KEY or not isinstance(value, (bytes, bytearray)):
            continue
        try:
            fields, preconditions, retry_delay, info = _decode_details(bytes(value))
        except Exception:  # a malformed trailer: keep the code and message
            pass
    cls = error_class(code)
    return cls(
        details,
        status_code=code,
        field_violations=fields,
        precondition_violations=preconditions,
        retry_delay=retry_delay,
        error_info=info,
        method=method,
        trailing_metadata=trailers,
    )


def _decode_details(
    raw: bytes,
) -> Tuple[List[FieldViolation], List[PreconditionViolation], Optional[timedelta], Optional[Dict[str, Any]]]:
    from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

    status = status_pb2.Status.FromString(raw)
    fields: List[FieldViolation] = []
    preconditions: List[PreconditionViolation] = []
    retry_delay: Optional[timedelta] = None
    info: Optional[Dict[str, Any]] = None
    for any_msg in status.details:
        if any_msg.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            any_msg.Unpack(bad)
            fields.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
        elif any_msg.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            pf = error_details_pb2.PreconditionFailure()
            any_msg.Unpack(pf)
            preconditions.extend(PreconditionViolation(v.type, v.subject, v.description) for v in pf.violations)
        elif any_msg.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            ri = error_details_pb2.RetryInfo()
            any_msg.Unpack(ri)
            retry_delay = ri.retry_delay.ToTimedelta()
        elif any_msg.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            ei = error_details_pb2.ErrorInfo()
            any_msg.Unpack(ei)
            info = {"reason": ei.reason, "domain": ei.domain, "metadata": dict(ei.metadata)}
    return fields, preconditions, retry_delay, info


# Errors a worker handler raises.


class RetryableError(Exception):
    """Raised by a handler: this attempt failed; retry (after `retry_after`,
    else the task's backoff) if attempts remain."""

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        retry_after: Optional[Any] = None,
        kind: Optional[str] = None,
        details: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.kind = kind
        self.details = details


class FatalError(Exception):
    """Raised by a handler: the task fails for good now, whatever attempts
    remain."""

    retryable = False

    def __init__(self, message: str, *, kind: Optional[str] = None, details: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.details = details


#: The TypeScript client's name for `FatalError`.
NonRetryableError = FatalError
