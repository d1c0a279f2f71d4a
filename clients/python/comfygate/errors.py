"""The error details the gateway attaches to a gRPC status.

A failed call raises grpc.RpcError; its code() is the gRPC status code and its
details() the message. Many errors also carry, in the trailing metadata
"grpc-status-details-bin", a google.rpc.Status with details:

- google.rpc.ErrorInfo: why RunComfy or the gateway refused the call
  (error_info below);
- google.rpc.RetryInfo: when to retry a RESOURCE_EXHAUSTED call
  (retry_delay below).

The two messages are small and stable, so they are read here from the wire
format rather than depending on googleapis-common-protos.
"""

from typing import Dict, Iterator, NamedTuple, Optional, Tuple

import grpc

__all__ = ["ErrorInfo", "error_info", "retry_delay"]

_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_TYPE_PREFIX = "type.googleapis.com/"


class ErrorInfo(NamedTuple):
    """google.rpc.ErrorInfo: the machine-readable cause of an error."""

    #: UPSTREAM_<code> (RunComfy's error code), UPSTREAM_HTTP_<status>,
    #: UPSTREAM_UNAVAILABLE, UPSTREAM_TIMEOUT or UPSTREAM_NO_ANSWER in the
    #: domain "runcomfy.net"; DRAINING, UPSTREAM_NO_ANSWER or BODY_TOO_LARGE in
    #: the domain "comfygate".
    reason: str
    #: "runcomfy.net" for RunComfy's answers, "comfygate" for the gateway's own.
    domain: str
    #: e.g. http_status, upstream_code, job_may_exist, last_seq, last_epoch.
    metadata: Dict[str, str]


def _varint(buf: bytes, pos: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes) -> Iterator[Tuple[int, object]]:
    """Yields (field number, value) of a protobuf message: ints for varints,
    bytes for length-delimited fields; fixed-width fields are skipped."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _varint(buf, pos)
            yield number, value
        elif wire_type == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise ValueError("truncated field")
            yield number, buf[pos:pos + size]
            pos += size
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise ValueError("unsupported wire type %d" % wire_type)


def _details(err: grpc.RpcError) -> Iterator[Tuple[str, bytes]]:
    """Yields (type name, value) of each detail of a failed call's status."""
    trailers = getattr(err, "trailing_metadata", None)
    if trailers is None:
        return
    for key, value in trailers() or ():
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            # google.rpc.Status: 3 = repeated google.protobuf.Any details;
            # Any: 1 = type_url, 2 = value.
            for number, any_bytes in _fields(value):
                if number != 3 or not isinstance(any_bytes, bytes):
                    continue
                type_url, payload = "", b""
                for n, v in _fields(any_bytes):
                    if n == 1 and isinstance(v, bytes):
                        type_url = v.decode("utf-8")
                    elif n == 2 and isinstance(v, bytes):
                        payload = v
                yield type_url[len(_TYPE_PREFIX):] if type_url.startswith(_TYPE_PREFIX) else type_url, payload
        except ValueError:
            return


def error_info(err: grpc.RpcError) -> Optional[ErrorInfo]:
    """The google.rpc.ErrorInfo detail of a failed call, or None when it has
    none (a request's NOT_FOUND, for one, never carries details)."""
    for type_name, payload in _details(err):
        if type_name != "google.rpc.ErrorInfo":
            continue
        reason, domain, metadata = "", "", {}
        try:
            for number, value in _fields(payload):
                if not isinstance(value, bytes):
                    continue
                if number == 1:
                    reason = value.decode("utf-8")
                elif number == 2:
                    domain = value.decode("utf-8")
                elif number == 3:  # map<string, string>: entries {1: key, 2: value}
                    entry = {n: v for n, v in _fields(value) if isinstance(v, bytes)}
                    metadata[entry.get(1, b"").decode("utf-8")] = entry.get(2, b"").decode("utf-8")
        except ValueError:
            return None
        return ErrorInfo(reason, domain, metadata)
    return None


def retry_delay(err: grpc.RpcError) -> Optional[float]:
    """The google.rpc.RetryInfo delay of a failed call in seconds, or None when
    it has none. RESOURCE_EXHAUSTED errors (a per-tenant limit of the gateway,
    or RunComfy rate limiting) carry it."""
    for type_name, payload in _details(err):
        if type_name != "google.rpc.RetryInfo":
            continue
        seconds = nanos = 0
        try:
            for number, value in _fields(payload):
                if number == 1 and isinstance(value, bytes):  # google.protobuf.Duration
                    for n, v in _fields(value):
                        if n == 1 and isinstance(v, int):
                            seconds = v
                        elif n == 2 and isinstance(v, int):
                            nanos = v
        except ValueError:
            return None
        return seconds + nanos / 1e9
    return None
