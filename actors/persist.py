"""Saving the state to disk, off ProxyActor's thread, and reading it back at start.

A write is atomic (temporary file, fsync, rename, fsync of the directory), so
a crash leaves either the old file or the new one, never half of one. Writes
are coalesced: while one is in progress, later states only replace the one
waiting, so a burst of heartbeats costs a few writes, not one each.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import pykka

from proxy import ProxyState
from proxy.persisted import from_document, to_document

log = logging.getLogger(__name__)


class StateFile:
    """One JSON file holding the saved state."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> ProxyState | None:
        """The saved state; None (with a warning) when missing, unreadable or corrupt."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("state file %s unreadable, starting empty: %s", self.path, exc)
            return None
        try:
            return from_document(json.loads(text))
        except (ValueError, RecursionError) as exc:
            log.warning("state file %s is corrupt, starting empty: %s", self.path, exc)
            return None

    def save(self, state: ProxyState) -> None:
        """Replace the file atomically with ``state``."""
        data = json.dumps(to_document(state), indent=1).encode()
        directory = self.path.parent
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        # The rename is only durable once the directory entry is on disk.
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class _Wake:
    """To PersistActor: a newer state is waiting in its :class:`PendingState`."""


class PendingState:
    """A one-place mailbox for states to save; the newest replaces the waiting one.

    ProxyActor calls :meth:`offer` after each change. Only the first offer
    after a write wakes the PersistActor, so its mailbox holds at most one
    wake-up however fast states arrive.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: ProxyState | None = None
        self._target: pykka.ActorRef[Any] | None = None

    def wake(self, target: pykka.ActorRef[Any]) -> None:
        """Tell ``target`` a _Wake when a state arrives (now, if one already waits)."""
        with self._lock:
            self._target = target
            waiting = self._waiting is not None
        if waiting:
            # An offer made before the target existed woke nobody; without this
            # every later offer would see a waiting state and not wake it either.
            target.tell(_Wake())

    def offer(self, state: ProxyState) -> None:
        with self._lock:
            wake = self._waiting is None
            self._waiting = state
        if wake and self._target is not None:
            try:
                self._target.tell(_Wake())
            except pykka.ActorDeadError:
                log.debug("state not saved: the persister has stopped")

    def take(self) -> ProxyState | None:
        with self._lock:
            state, self._waiting = self._waiting, None
        return state


class PersistActor(pykka.ThreadingActor):
    """Saves the newest state offered to ``pending``, skipping ones already on disk."""

    def __init__(self, store: StateFile, pending: PendingState) -> None:
        super().__init__()
        self._store = store
        self._pending = pending
        self._written: dict[str, Any] | None = None
        self.writes = 0

    def on_start(self) -> None:
        self._pending.wake(self.actor_ref)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Wake):
            self._write_waiting()
        return None

    def on_stop(self) -> None:
        self._write_waiting()  # The last change before shutdown must not be lost.

    def _write_waiting(self) -> None:
        state = self._pending.take()
        if state is None:
            return
        document = to_document(state)
        if document == self._written:
            return  # A heartbeat that changed nothing on disk.
        try:
            self._store.save(state)
        except OSError as exc:
            log.error("could not save state to %s: %s", self._store.path, exc)
            return
        self._written = document
        self.writes += 1
