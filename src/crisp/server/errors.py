"""Turning crisp's domain errors into gRPC status codes.

Every servicer method runs inside :class:`ErrorLayer`: a :class:`crisp.errors.CrispError`
becomes its status code with the message as details. A full disk met anywhere (ENOSPC,
EDQUOT, SQLITE_FULL) is not a bug but the host's state: RESOURCE_EXHAUSTED naming the
filesystem. A failing runc or conmon is INTERNAL with its stderr. Anything else is a bug in
crisp, logged with its traceback and answered as UNKNOWN without one: UNKNOWN never stands for
something the client or operator can act on.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from crisp import errors
from crisp.diskspace import disk_full_from, is_disk_full
from crisp.server.layers import Context, Layer, StreamBehavior, UnaryBehavior

log = logging.getLogger(__name__)

_CODES: dict[type[errors.CrispError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Internal: grpc.StatusCode.INTERNAL,
}


def status_code(error: BaseException) -> grpc.StatusCode:
    """The status a client sees for ``error``."""
    for kind in type(error).__mro__:
        if kind in _CODES:
            return _CODES[kind]
    return grpc.StatusCode.UNKNOWN


class ErrorLayer(Layer):
    """Maps domain errors to status codes for every unary and server-streaming method.

    ``root_dir`` is blamed for a full disk whose error names no file (most of crisp's writes
    go there: the database, blobs, layers, container layers).
    """

    def __init__(self, root_dir: Path | str = "/") -> None:
        self.root_dir = Path(root_dir)

    def wrap_unary(self, method: str, behavior: UnaryBehavior) -> UnaryBehavior:
        async def guarded(request: Any, context: Context) -> Any:
            try:
                return await behavior(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as error:  # every failure must become a status
                await self._abort(context, method, error)

        return guarded

    def wrap_stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        async def guarded(request: Any, context: Context) -> AsyncIterator[Any]:
            try:
                async for item in behavior(request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await self._abort(context, method, error)

        return guarded

    async def _abort(self, context: Context, method: str, error: Exception) -> None:
        if is_disk_full(error) and not isinstance(error, errors.ResourceExhausted):
            rpc = method.rsplit("/", 1)[-1] or method
            error = disk_full_from(error, self.root_dir, rpc)
        if isinstance(error, errors.ResourceExhausted):  # the operator has to act: say so
            cause = _root_cause(error)
            log.warning("%s failed: %s%s", method, error,
                        f" ({type(cause).__name__}: {cause})" if cause is not error else "")
            await context.abort(status_code(error), str(error))
        if isinstance(error, errors.CrispError):
            log.debug("%s failed: %s", method, error)
            await context.abort(status_code(error), str(error))
        log.error("%s failed unexpectedly", method, exc_info=error)
        await context.abort(
            grpc.StatusCode.UNKNOWN,
            f"crisp failed unexpectedly in {method}: {type(error).__name__}: {error} "
            "(the daemon log has the details)",
        )


def _root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None:
        error = error.__cause__
    return error
