"""Who a container's first process runs as, resolved against the image's passwd and group files.

The kubelet may name a user by uid or by name, the image's config may say "name:group", and
neither the host's databases nor NSS may be consulted: only the files inside the rootfs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from crisp.errors import InvalidArgument
from crisp.oci.model import ProcessUser, SupplementalGroupsPolicy, UserRequest


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def parse_passwd(text: str) -> list[PasswdEntry]:
    entries = []
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) < 4 or line.startswith("#"):
            continue
        try:
            entries.append(PasswdEntry(parts[0], int(parts[2]), int(parts[3])))
        except ValueError:
            continue
    return entries


def parse_group(text: str) -> list[GroupEntry]:
    entries = []
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) < 3 or line.startswith("#"):
            continue
        members = tuple(m for m in parts[3].split(",") if m) if len(parts) > 3 else ()
        try:
            entries.append(GroupEntry(parts[0], int(parts[2]), members))
        except ValueError:
            continue
    return entries


def _read_inside(rootfs: Path, name: str) -> str:
    """A file of the image, refusing to follow a symlink out of the rootfs."""
    path = rootfs / "etc" / name
    try:
        if path.is_symlink():
            return ""
        return path.read_text(errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return ""


def resolve_user(rootfs: Path, image_user: str, security: UserRequest) -> ProcessUser:
    """The uid, gid and supplementary gids of the container's process."""
    users = parse_passwd(_read_inside(rootfs, "passwd"))
    groups = parse_group(_read_inside(rootfs, "group"))
    return resolve_user_from(users, groups, image_user, security)


def resolve_user_from(
    users: list[PasswdEntry],
    groups: list[GroupEntry],
    image_user: str,
    security: UserRequest,
) -> ProcessUser:
    """:func:`resolve_user` on already parsed files (pure, for tests)."""
    if security.run_as_user is not None and security.run_as_username:
        raise InvalidArgument("run_as_user and run_as_username are mutually exclusive")
    if (security.run_as_group is not None and security.run_as_user is None
            and not security.run_as_username):
        raise InvalidArgument("run_as_group is only valid with run_as_user or run_as_username")
    if security.run_as_user is not None:
        user_part, group_part = str(security.run_as_user), ""
    elif security.run_as_username:
        user_part, group_part = security.run_as_username, ""
    else:
        user_part, _, group_part = image_user.partition(":")

    uid, gid, name = _lookup_user(users, user_part)
    if security.run_as_group is not None:
        gid = security.run_as_group
    elif group_part:
        gid = _lookup_group(groups, group_part)

    # The primary group leads the list, as initgroups(3) makes it: the process's groups are
    # then exactly what ContainerStatus reports, and what `id -G` shows.
    additional: list[int] = [gid]
    # Strict keeps the image's /etc/group out: only what the pod asked for.
    if name and security.supplemental_groups_policy != SupplementalGroupsPolicy.STRICT:
        additional.extend(g.gid for g in groups if name in g.members and g.gid not in additional)
    for extra in security.supplemental_groups:
        if extra not in additional:
            additional.append(extra)
    return ProcessUser(uid=uid, gid=gid, additional_gids=additional)


def _lookup_user(users: list[PasswdEntry], user: str) -> tuple[int, int, str]:
    """(uid, primary gid, name) of ``user``, a name or a number; an unknown number runs as gid 0."""
    if not user:
        user = "0"
    if user.isdigit():
        uid = int(user)
        for entry in users:
            if entry.uid == uid:
                return uid, entry.gid, entry.name
        return uid, 0, ""
    for entry in users:
        if entry.name == user:
            return entry.uid, entry.gid, entry.name
    raise InvalidArgument(
        f"user {user!r} is not in the image's /etc/passwd; use a numeric uid or add the user"
    )


def _lookup_group(groups: list[GroupEntry], group: str) -> int:
    if group.isdigit():
        return int(group)
    for entry in groups:
        if entry.name == group:
            return entry.gid
    raise InvalidArgument(
        f"group {group!r} is not in the image's /etc/group; use a numeric gid or add the group"
    )

