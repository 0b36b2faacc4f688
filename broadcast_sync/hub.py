"""Who is in the room: unique names and the members that get broadcasts."""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Collection, Iterator
from typing import Generic, Protocol, TypeVar

from broadcast_sync.messages import SERVER_NAME


class Named(Protocol):
    """A member of the room is known by its unique name."""

    @property
    def name(self) -> str: ...


MemberT = TypeVar("MemberT", bound=Named)


class RoomFull(Exception):
    """No more clients may join."""


class Hub(Generic[MemberT]):
    """The registry of names and members.

    A name is reserved when a handshake asks for it, so two handshakes never
    get the same one, and released when its client leaves. Members are the
    clients that receive broadcasts: only the dispatcher adds and removes
    them, and it fans out while holding ``lock``, so a member is never added
    in the middle of a fan-out.
    """

    def __init__(self, max_clients: int, max_name_chars: int) -> None:
        self.max_clients = max_clients
        self.max_name_chars = max_name_chars
        #: Guards ``_names`` and ``_members``.
        self.lock = threading.Lock()
        self._names: set[str] = set()
        self._members: dict[str, MemberT] = {}

    def reserve_name(self, requested: str) -> str:
        """Reserve ``requested``, or a free variant of it, and return it.

        A taken name gets the first free suffix ``_1``, ``_2``, ... and is
        shortened so that the result stays within ``max_name_chars``.

        Raises:
            RoomFull: if ``max_clients`` names are reserved already, or no
                variant of the name fits ``max_name_chars``.
        """
        with self.lock:
            if len(self._names) >= self.max_clients:
                raise RoomFull(f"the server is full ({self.max_clients} clients)")
            name = self._free_variant(requested)
            self._names.add(name)
            return name

    def _free_variant(self, requested: str) -> str:
        if self._is_free(requested):
            return requested
        for number in itertools.count(1):
            suffix = f"_{number}"
            keep = self.max_name_chars - len(suffix)
            if keep < 0:
                raise RoomFull(f"no free name like {requested!r}")
            candidate = requested[:keep] + suffix
            if self._is_free(candidate):
                return candidate
        raise AssertionError("unreachable")  # pragma: no cover

    def _is_free(self, name: str) -> bool:
        return name != SERVER_NAME and name not in self._names

    def release_name(self, name: str) -> None:
        """Free a name reserved by :meth:`reserve_name`."""
        with self.lock:
            self._names.discard(name)

    def add_member(self, member: MemberT) -> int:
        """Start broadcasting to ``member``; return the member count."""
        with self.lock:
            self._members[member.name] = member
            return len(self._members)

    def remove_member(self, member: MemberT) -> int:
        """Stop broadcasting to ``member`` and free its name.

        Returns:
            The member count after it left.
        """
        with self.lock:
            self._members.pop(member.name, None)
            self._names.discard(member.name)
            return len(self._members)

    @contextlib.contextmanager
    def locked_members(self) -> Iterator[Collection[MemberT]]:
        """Hold ``lock`` while the caller goes through the members."""
        with self.lock:
            yield self._members.values()

    def members(self) -> list[MemberT]:
        """A snapshot of the members, for work done without the lock."""
        with self.lock:
            return list(self._members.values())
