"""Errors the domain packages raise, each meaning one gRPC status code.

Domain code never imports grpc: it raises one of these and ``crisp.server`` turns it into
the matching status with the message as the details, which a person must be able to act on.
"""


class CrispError(Exception):
    """Base of every error crisp reports to a client."""


class InvalidArgument(CrispError):
    """The request is malformed or asks for something unsupported (INVALID_ARGUMENT)."""


class NotFound(CrispError):
    """An id, name or reference names nothing crisp has (NOT_FOUND)."""


class AlreadyExists(CrispError):
    """A name or id is taken by another object (ALREADY_EXISTS)."""


class FailedPrecondition(CrispError):
    """The object is in the wrong state, or the host cannot do it (FAILED_PRECONDITION)."""


class Unimplemented(CrispError):
    """crisp does not support this (UNIMPLEMENTED)."""


class DeadlineExceeded(CrispError):
    """The operation ran out of the time it was given (DEADLINE_EXCEEDED)."""


class ResourceExhausted(CrispError):
    """The host ran out of something crisp needs, such as disk space (RESOURCE_EXHAUSTED)."""


class Unavailable(CrispError):
    """A registry, plugin or other outside party could not be reached (UNAVAILABLE)."""


class Unauthenticated(CrispError):
    """A registry wants credentials the request did not carry, or refused them (UNAUTHENTICATED)."""


class PermissionDenied(CrispError):
    """A registry knows who is asking and refuses them this image (PERMISSION_DENIED)."""


class Internal(CrispError):
    """Part of the node's runtime stack (runc, conmon, mounts, namespaces) failed (INTERNAL).

    Not the request's fault and not a crisp bug: the message carries the program's stderr so
    the operator can fix the node.
    """


class RuntimeFailure(Internal):
    """An outside program (runtime, monitor) failed; the message has its stderr (INTERNAL)."""
