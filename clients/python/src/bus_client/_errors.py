"""busd's errors with their google.rpc details decoded."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class HelpLink:
    """A ``google.rpc.Help`` link: what it is and where."""

    description: str
    url: str


@dataclass
class BusError(Exception):
    """A failed busd call, with what busd says about it.

    - ``code``: the gRPC status code (``grpc.StatusCode``).
    - ``message``: the one-line error.
    - ``reason``: ``ErrorInfo.reason``, stable and UPPER_SNAKE (``NOT_FOUND``,
      ``BILLING_REQUIRED``, ``QUOTA_EXHAUSTED``, ``TOKEN_EXPIRED``, ...); empty if absent.
    - ``domain`` and ``metadata``: the rest of ``ErrorInfo``.
    - ``guidance``: ``LocalizedMessage.message``, what to do next.
    - ``help_links``: ``Help.links``; ``help_url`` is the first one's URL.
    - ``retry_after``: seconds, from ``RetryInfo``.
    - ``quota_violations`` / ``precondition_violations``: descriptions from ``QuotaFailure`` /
      ``PreconditionFailure``.
    """

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: Dict[str, str] = field(default_factory=dict)
    guidance: str = ""
    help_links: List[HelpLink] = field(default_factory=list)
    retry_after: Optional[float] = None
    quota_violations: List[str] = field(default_factory=list)
    precondition_violations: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        text = self.message
        if self.guidance:
            text += f" ({self.guidance})"
        return text

    @property
    def help_url(self) -> Optional[str]:
        """The first help link's URL, if any."""
        return self.help_links[0].url if self.help_links else None

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> "BusError":
        """Decodes the status and its ``grpc-status-details-bin`` trailer (via grpcio-status)."""
        code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
        message = (error.details() if isinstance(error, grpc.Call) else None) or str(error)
        result = cls(code=code, message=message)
        status = rpc_status.from_call(error) if isinstance(error, grpc.Call) else None
        if status is None:
            return result
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                result.reason, result.domain = info.reason, info.domain
                result.metadata = dict(info.metadata)
            elif detail.Is(error_details_pb2.LocalizedMessage.DESCRIPTOR):
                localized = error_details_pb2.LocalizedMessage()
                detail.Unpack(localized)
                result.guidance = localized.message
            elif detail.Is(error_details_pb2.Help.DESCRIPTOR):
                help_ = error_details_pb2.Help()
                detail.Unpack(help_)
                result.help_links.extend(HelpLink(l.description, l.url) for l in help_.links)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                result.retry_after = retry.retry_delay.ToTimedelta().total_seconds()
            elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
                quota = error_details_pb2.QuotaFailure()
                detail.Unpack(quota)
                result.quota_violations.extend(v.description for v in quota.violations)
            elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
                precondition = error_details_pb2.PreconditionFailure()
                detail.Unpack(precondition)
                result.precondition_violations.extend(
                    v.description for v in precondition.violations
                )
        return result


@contextlib.contextmanager
def errors() -> Iterator[None]:
    """Within ``with bus_client.errors():``, a ``grpc.RpcError`` is raised as :class:`BusError`."""
    try:
        yield
    except grpc.RpcError as error:
        raise BusError.from_rpc_error(error) from error
