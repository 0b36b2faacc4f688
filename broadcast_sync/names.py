"""Unique names: the rule that gives each client its own, and its local registry.

A name is taken while any of its keys (``nicknames.name_keys``) is held:
``Alice`` while ``alice`` is online, and ``alice`` with a Cyrillic ``a`` too.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

from broadcast_sync.messages import SERVER_NAME
from broadcast_sync.nicknames import name_keys


class RoomFull(Exception):
    """No more clients may join, or no variant of a name is free."""


def name_variants(requested: str, max_chars: int) -> Iterator[str]:
    """The names to try for ``requested``, in order of preference.

    First the name itself (unless it is, or looks like, the server's), then
    the suffixes ``_1``, ``_2``, ..., the name shortened so that each stays
    within ``max_chars``. Both registries, local and Redis, take the first
    whose keys are all free.

    Raises:
        RoomFull: once no suffix fits ``max_chars``.
    """
    if name_keys(requested).isdisjoint(name_keys(SERVER_NAME)):
        yield requested
    for number in itertools.count(1):
        suffix = f"_{number}"
        keep = max_chars - len(suffix)
        if keep < 0:
            raise RoomFull(f"no free name like {requested!r}")
        yield requested[:keep] + suffix


class NameRegistry:
    """The names in use on this server, when it is the whole room.

    A name is reserved when a handshake asks for it, so two handshakes never
    get the same one, or two that pass for each other, and released when its
    client has left.
    """

    def __init__(self, max_clients: int, max_name_chars: int) -> None:
        self.max_clients = max_clients
        self.max_name_chars = max_name_chars
        #: Guards ``_names`` and ``_keys``.
        self._lock = threading.Lock()
        self._names: set[str] = set()
        #: Each key of a reserved name, and that name.
        self._keys: dict[str, str] = {}

    def reserve(self, requested: str) -> str:
        """Reserve ``requested``, or its first free variant, and return it.

        Raises:
            RoomFull: if ``max_clients`` names are reserved already, or no
                variant of the name fits ``max_name_chars``.
        """
        with self._lock:
            if len(self._names) >= self.max_clients:
                raise RoomFull(f"the server is full ({self.max_clients} clients)")
            for name in name_variants(requested, self.max_name_chars):
                keys = name_keys(name)
                if keys.isdisjoint(self._keys):
                    self._names.add(name)
                    self._keys.update(dict.fromkeys(keys, name))
                    return name
        raise AssertionError("unreachable")  # pragma: no cover

    def release(self, name: str) -> None:
        """Free a name reserved by :meth:`reserve`."""
        with self._lock:
            if name in self._names:
                self._names.remove(name)
                for key in name_keys(name):
                    del self._keys[key]
