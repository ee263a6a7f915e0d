"""Checks every request against the limits of its protobuf schema before any servicer runs.

Protobuf keeps an out-of-range enum number and a string with NUL bytes as they came, so
without this walk such values reach crisp's code (and runc, and the kernel) and fail there
as crashes. One walk over each request's descriptor refuses, with INVALID_ARGUMENT:

- enum numbers the schema does not name (list filters excepted: an unknown value there
  matches nothing, as the kubelet expects);
- NUL bytes in any string, map key or value (no path, name or argument may hold one);
- paths longer than the kernel takes (PATH_MAX, and NAME_MAX per component);
- object names, uids and namespaces longer than Kubernetes allows;
- object ids that crisp could never have made.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from crisp.errors import InvalidArgument
from crisp.server.layers import Context, Layer, StreamBehavior, UnaryBehavior

PATH_MAX = 4096
NAME_MAX = 255
# Kubernetes object names are DNS subdomains at most; uids are shorter still.
METADATA_MAX = 253

PATH_FIELDS = frozenset({
    "host_path", "container_path", "log_directory", "log_path", "working_dir",
    "image_sub_path", "cgroup_parent", "location", "path",
})
METADATA_FIELDS = frozenset({"name", "uid", "namespace"})
ID_FIELDS = frozenset({"pod_sandbox_id", "container_id", "target_id"})
_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_.-]{0,254}")


def check_request(message: Message) -> None:
    """Raise :class:`InvalidArgument` naming the first field of ``message`` out of bounds."""
    for problem in _problems(message, message.DESCRIPTOR.name, in_filter=False):
        raise InvalidArgument(problem)


def _problems(message: Message, where: str, *, in_filter: bool) -> Iterator[str]:
    name = message.DESCRIPTOR.name
    in_filter = in_filter or name.endswith("Filter")
    is_metadata = name.endswith("Metadata")
    for field, value in message.ListFields():
        path = f"{where}.{field.name}"
        entry = field.message_type
        # A map's value is a Mapping; asking the descriptor (GetOptions().map_entry) would
        # import descriptor_pb2, which holds 3 MiB for the daemon's lifetime.
        if entry is not None and isinstance(value, Mapping):
            yield from _map_problems(entry, value, path, in_filter=in_filter)
            continue
        items = enumerate(value) if field.is_repeated else ((None, value),)
        for index, item in items:
            item_path = path if index is None else f"{path}[{index}]"
            yield from _value_problems(field, item, item_path,
                                       in_filter=in_filter, is_metadata=is_metadata)


def _map_problems(entry: Descriptor, value: Any, path: str, *,
                  in_filter: bool) -> Iterator[str]:
    value_field = entry.fields_by_name["value"]
    for key in value:
        if isinstance(key, str) and "\0" in key:
            yield f"{path} has a key with a NUL byte"
        yield from _value_problems(value_field, value[key], f"{path}[{key!r}]",
                                   in_filter=in_filter, is_metadata=False)


def _value_problems(field: FieldDescriptor, value: Any, path: str, *,
                    in_filter: bool, is_metadata: bool) -> Iterator[str]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        yield from _problems(value, path, in_filter=in_filter)
    elif field.enum_type is not None:
        enum = field.enum_type
        if not in_filter and value not in enum.values_by_number:
            names = ", ".join(f"{v.name} ({v.number})" for v in enum.values)
            yield f"{path} is {value}, which is not a {enum.name}; use one of {names}"
    elif field.type == FieldDescriptor.TYPE_STRING:
        yield from _string_problems(field.name, value, path,
                                    in_filter=in_filter, is_metadata=is_metadata)


def _string_problems(name: str, value: str, path: str, *,
                     in_filter: bool, is_metadata: bool) -> Iterator[str]:
    if "\0" in value:
        yield f"{path} holds a NUL byte"
    elif name in PATH_FIELDS:
        if len(value.encode()) > PATH_MAX:
            yield f"{path} is longer than the {PATH_MAX} bytes a path may have"
        elif any(len(part.encode()) > NAME_MAX for part in value.split("/")):
            yield f"{path} has a component longer than the {NAME_MAX} bytes a file name may have"
    elif is_metadata and name in METADATA_FIELDS and len(value) > METADATA_MAX:
        yield f"{path} is longer than {METADATA_MAX} characters"
    elif not in_filter and name in ID_FIELDS and value and not _ID.fullmatch(value):
        yield f"{path} {value[:80]!r} is not an id crisp gave out"


class RequestCheckLayer(Layer):
    """Runs :func:`check_request` on every request before its servicer sees it."""

    def wrap_unary(self, method: str, behavior: UnaryBehavior) -> UnaryBehavior:
        async def checked(request: Any, context: Context) -> Any:
            if isinstance(request, Message):
                check_request(request)
            return await behavior(request, context)

        return checked

    def wrap_stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        async def checked(request: Any, context: Context) -> Any:
            if isinstance(request, Message):
                check_request(request)
            async for item in behavior(request, context):
                yield item

        return checked
