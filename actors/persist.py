"""Saving the state to disk, off ProxyActor's thread, and reading it back at start.

A write is atomic (temporary file, fsync, rename, fsync of the directory), so
a crash leaves either the old file or the new one, never half of one. Writes
are coalesced: while one is in progress, later states only replace the one
waiting, so a burst of heartbeats costs a few writes, not one each. Both
mean a crash can lose the last change(s), never the file: a kill during a
save leaves at most a temporary file, which the next start removes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any

import pykka

from rpcproxy.actors.lifecycle import ReleasingActor
from rpcproxy.proxy import ProxyState
from rpcproxy.proxy.persisted import from_document, to_document, within_max_servers

log = logging.getLogger(__name__)

MAX_STATE_FILE_BYTES = 64 << 20
"""A saved state is a few MB at most (``max_servers`` addresses); anything much
bigger is not ours (a log file given by mistake) and is not read whole."""

_TEMP_SUFFIX = ".tmp"
_LEGACY_TEMP = re.compile(r"[a-z0-9_]{8}")
"""Temporaries of earlier versions: mkstemp's eight random characters, no suffix."""


class NotRegularFileError(ValueError):
    """The state file's path names something that is not a regular file.

    Opening a FIFO for reading blocks until a writer comes, and a device can
    be read without end: either would hang the start, so both are refused.
    """


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


class StateFile:
    """One JSON file holding the saved state."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._temp_prefix = f".{self.path.name}."

    def check(self) -> None:
        """Refuse a path that exists and is not a regular file (symlinks followed).

        Raises:
            NotRegularFileError: it is a FIFO, a directory, a device or a socket.
        """
        try:
            mode = os.stat(self.path).st_mode
        except OSError:
            return  # Missing (created by the first save) or unreadable (load says so).
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(f"{self.path} is {_kind(mode)}, not a regular file")

    def remove_leftovers(self) -> list[Path]:
        """Delete the temporary files of saves that a crash interrupted.

        Only names this file's saves make (``.<name>.<random>.tmp``, or an
        earlier version's ``.<name>.<8 random characters>``), and only regular
        files: nothing else in the directory is touched.

        Returns:
            The paths removed.
        """
        removed: list[Path] = []
        try:
            entries = list(os.scandir(self.path.parent))
        except OSError as exc:
            log.warning("cannot look for leftover temporary files of %s: %s", self.path, exc)
            return removed
        for entry in entries:
            if not self._is_temporary(entry.name):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("cannot remove leftover temporary file %s: %s", entry.path, exc)
                continue
            removed.append(Path(entry.path))
        return removed

    def _is_temporary(self, name: str) -> bool:
        if not name.startswith(self._temp_prefix):
            return False
        rest = name[len(self._temp_prefix) :]
        return (len(rest) > len(_TEMP_SUFFIX) and rest.endswith(_TEMP_SUFFIX)) or bool(
            _LEGACY_TEMP.fullmatch(rest)
        )

    def load(self, max_servers: int | None = None) -> ProxyState | None:
        """The saved state; None (with a warning) when missing, unreadable or corrupt.

        Args:
            max_servers: hold the state to this many servers (docs/protocol.md
                section 8): the first ones of its active list are kept, and
                one warning counts the ones dropped. None keeps every one.

        Raises:
            NotRegularFileError: the path is not a regular file (see :meth:`check`).
        """
        try:
            # O_NONBLOCK: were the path swapped for a FIFO after check(), the
            # open must not wait for a writer.
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("state file %s unreadable, starting empty: %s", self.path, exc)
            return None
        try:
            with os.fdopen(fd, "rb") as handle:
                mode = os.fstat(handle.fileno()).st_mode
                if not stat.S_ISREG(mode):
                    raise NotRegularFileError(f"{self.path} is {_kind(mode)}, not a regular file")
                data = handle.read(MAX_STATE_FILE_BYTES + 1)
        except OSError as exc:
            log.warning("state file %s unreadable, starting empty: %s", self.path, exc)
            return None
        if len(data) > MAX_STATE_FILE_BYTES:
            log.warning(
                "state file %s is larger than %d bytes, starting empty",
                self.path,
                MAX_STATE_FILE_BYTES,
            )
            return None
        try:
            state = from_document(json.loads(data.decode("utf-8")))
        except UnicodeDecodeError as exc:
            log.warning("state file %s unreadable, starting empty: %s", self.path, exc)
            return None
        except (ValueError, RecursionError) as exc:
            log.warning("state file %s is corrupt, starting empty: %s", self.path, exc)
            return None
        if max_servers is None:
            return state
        # Held whole, a file over the bound would refuse every add until
        # servers left; the next save writes the cut state back.
        held, dropped = within_max_servers(state, max_servers)
        if dropped:
            log.warning(
                "state file %s holds %d servers, more than max_servers (%d): "
                "kept the first %d of its active list, dropped %d",
                self.path,
                state.num_members,
                max_servers,
                held.num_members,
                dropped,
            )
        return held

    def save(self, state: ProxyState) -> None:
        """Replace the file atomically with ``state``."""
        data = json.dumps(to_document(state), indent=1).encode()
        directory = self.path.parent
        fd, tmp = tempfile.mkstemp(prefix=self._temp_prefix, suffix=_TEMP_SUFFIX, dir=directory)
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


class PersistActor(ReleasingActor):
    """Saves the newest state offered to ``pending``, skipping ones already on disk."""

    # A save that raised anything but OSError is a bug, and it killed the
    # actor: it is not run again on the way out.
    release_on_failure = False

    def __init__(self, store: StateFile, pending: PendingState) -> None:
        super().__init__()
        self._store = store
        self._pending = pending
        self._written: dict[str, Any] | None = None
        self.writes = 0

    def on_start(self) -> None:
        self._pending.wake(self.actor_ref)

    def on_receive(self, message: Any) -> Any:
        if not isinstance(message, _Wake):
            return super().on_receive(message)  # pykka's warning
        self._write_waiting()
        return None

    def release(self) -> None:
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
