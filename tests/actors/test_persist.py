"""Saving the state (actors/persist.py): atomic file, coalesced writes, survival.

Real pykka threads and real files in ``tmp_path``. A store whose ``save`` can
be held on a gate lets a test offer states while a write is in progress, which
is when coalescing matters. Nothing sleeps: waits are on events, futures or a
poll with a deadline.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pykka
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpcproxy.actors import AddPrimary, ApplyHeartbeat, ProxyActor, ProxySettings, SetBackups
from rpcproxy.actors.persist import NotRegularFileError, PendingState, PersistActor, StateFile
from rpcproxy.proxy import LocalIdentity, ProxyState, add_primary, check_invariant, set_backups
from rpcproxy.proxy.persisted import from_document, to_document
from tests.waiting import poll_until

from ._fakes import GATE_TIMEOUT, TIMEOUT, A, B, C, D, E, FakeProber, RecordingBox, hb

T = TypeVar("T")


def primaries(*names: Any) -> ProxyState:
    state = ProxyState()
    for a in names:
        state, _ = add_primary(state, a)
    return state


def numbered(n: int) -> ProxyState:
    """A distinct state per ``n`` (the node count differs)."""
    return ProxyState(active=(A,), primaries=(A,), num_nodes=n)


def on_disk(path: Path) -> dict[str, Any] | None:
    try:
        document: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return document


class GatedStore(StateFile):
    """A real StateFile that records each save and can hold saves on a gate."""

    def __init__(self, path: Path, *, gated: bool = False) -> None:
        super().__init__(path)
        self.gate: threading.Event | None = threading.Event() if gated else None
        self.entered = threading.Event()
        self.saved: list[ProxyState] = []
        self.fail_next = 0

    def save(self, state: ProxyState) -> None:
        self.saved.append(state)
        self.entered.set()
        if self.gate is not None and not self.gate.wait(GATE_TIMEOUT):
            raise TimeoutError("the test never opened the save gate")
        if self.fail_next:
            self.fail_next -= 1
            raise PermissionError(13, "Permission denied (test)", str(self.path))
        super().save(state)


def start_persister(store: StateFile) -> tuple[pykka.ActorRef[PersistActor], PendingState]:
    """Start a PersistActor and wait until its on_start has run."""
    pending = PendingState()
    ref = PersistActor.start(store, pending)
    sync(ref)
    return ref, pending


def sync(ref: pykka.ActorRef[PersistActor]) -> int:
    """The write count once every message told before this call is handled (FIFO)."""
    writes: int = ref.proxy().writes.get(timeout=TIMEOUT)
    return writes


# --------------------------------------------------------------------------
# StateFile.


def test_save_then_load_round_trip(tmp_path: Path) -> None:
    store = StateFile(tmp_path / "state.json")
    state = set_backups(primaries(A, B), [C])
    store.save(state)
    assert on_disk(store.path) == to_document(state)
    loaded = store.load()
    assert loaded is not None
    assert (loaded.active, loaded.primaries, loaded.backups) == (
        state.active,
        state.primaries,
        state.backups,
    )
    # Only the file itself is left: the temporary one was renamed over it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_save_replaces_the_previous_file(tmp_path: Path) -> None:
    store = StateFile(tmp_path / "state.json")
    store.save(primaries(A, B, C))
    store.save(primaries(D))
    assert on_disk(store.path) == to_document(primaries(D))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_failed_save_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateFile(tmp_path / "state.json")
    store.save(primaries(A))

    def crash(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device (test)")

    monkeypatch.setattr("rpcproxy.actors.persist.os.replace", crash)
    with pytest.raises(OSError, match="No space left"):
        store.save(primaries(B, C))
    assert on_disk(store.path) == to_document(primaries(A))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_save_into_a_missing_directory_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        StateFile(tmp_path / "missing" / "state.json").save(primaries(A))


def test_load_of_a_missing_file_is_none(tmp_path: Path) -> None:
    assert StateFile(tmp_path / "never-written.json").load() is None


def test_load_holds_the_state_to_max_servers_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rpcproxy.actors.persist")
    store = StateFile(tmp_path / "state.json")
    store.save(set_backups(primaries(A, B, C), (D, E)))
    held = store.load(max_servers=3)
    assert held is not None
    assert (held.active, held.primaries, held.backups) == ((A, B, C), (A, B, C), ())
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    assert str(store.path) in warnings[0] and "dropped 2" in warnings[0], warnings[0]
    # Within the bound, or with none, nothing is cut and nothing is said.
    caplog.clear()
    whole = store.load(max_servers=5)
    assert whole is not None and whole.num_members == 5
    loaded = store.load()
    assert loaded is not None and loaded.num_members == 5
    assert not caplog.records


GARBAGE: dict[str, bytes] = {
    "empty": b"",
    "whitespace": b"  \n",
    "text": b"hello, world",
    "binary": bytes(range(256)) * 4,
    "invalid utf-8": b'{"format": 1, "leader_addr": "\xff\xfe"}',
    "utf-16": json.dumps({"format": 1}).encode("utf-16"),
    "json list": b"[1, 2, 3]",
    "json null": b"null",
    "json string": b'"state"',
    "wrong format": json.dumps({**to_document(primaries(A)), "format": 99}).encode(),
    "bad address": json.dumps({**to_document(primaries(A)), "active": ["a:0"]}).encode(),
    "bool num_nodes": json.dumps({**to_document(primaries(A)), "num_nodes": True}).encode(),
    "deep nesting": b"[" * 200_000 + b"]" * 200_000,
    "nul bytes": b"\0" * 64,
    "two documents": (json.dumps(to_document(primaries(A))) * 2).encode(),
}


@pytest.mark.parametrize("content", GARBAGE.values(), ids=list(GARBAGE))
def test_load_of_garbage_is_none_with_a_warning(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rpcproxy.actors.persist")
    path = tmp_path / "state.json"
    path.write_bytes(content)
    assert StateFile(path).load() is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    assert "starting empty" in warnings[0].getMessage()
    assert str(path) in warnings[0].getMessage()


def test_load_of_every_truncation_of_a_real_file_is_none(tmp_path: Path) -> None:
    store = StateFile(tmp_path / "state.json")
    store.save(set_backups(primaries(A, B, C), [D, E]))
    whole = store.path.read_bytes()
    for cut in range(len(whole.rstrip())):
        store.path.write_bytes(whole[:cut])
        assert store.load() is None, whole[:cut]
    store.path.write_bytes(whole)
    assert store.load() is not None


def test_load_of_a_directory_is_none_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rpcproxy.actors.persist")
    path = tmp_path / "state.json"
    path.mkdir()
    assert StateFile(path).load() is None
    assert "unreadable" in caplog.text


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_load_never_raises(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fuzzed.json"
    path.write_bytes(content)
    state = StateFile(path).load()
    if state is not None:
        check_invariant(state)


# --------------------------------------------------------------------------
# PendingState.


def test_pending_state_keeps_only_the_newest() -> None:
    pending = PendingState()
    assert pending.take() is None
    for n in range(5):
        pending.offer(numbered(n))
    assert pending.take() == numbered(4)
    assert pending.take() is None


# --------------------------------------------------------------------------
# PersistActor.


def test_an_offer_is_written(tmp_path: Path) -> None:
    store = StateFile(tmp_path / "state.json")
    ref, pending = start_persister(store)
    pending.offer(primaries(A, B))
    assert sync(ref) == 1
    assert on_disk(store.path) == to_document(primaries(A, B))


def test_offers_during_a_write_are_coalesced(tmp_path: Path) -> None:
    store = GatedStore(tmp_path / "state.json", gated=True)
    ref, pending = start_persister(store)
    pending.offer(numbered(0))
    assert store.entered.wait(TIMEOUT)  # the first write is in progress, held
    for n in range(1, 200):
        pending.offer(numbered(n))
    assert store.gate is not None
    store.gate.set()
    writes = sync(ref)
    # The one in progress, then only the newest of the 199 that waited.
    assert writes == 2
    assert store.saved == [numbered(0), numbered(199)]
    assert on_disk(store.path) == to_document(numbered(199))


def test_a_burst_of_offers_costs_few_writes_and_ends_with_the_last(tmp_path: Path) -> None:
    store = StateFile(tmp_path / "state.json")
    ref, pending = start_persister(store)
    for n in range(500):
        pending.offer(numbered(n))
    writes = sync(ref)
    assert 1 <= writes < 500
    assert on_disk(store.path) == to_document(numbered(499))


def test_identical_documents_are_not_rewritten(tmp_path: Path) -> None:
    store = GatedStore(tmp_path / "state.json")
    ref, pending = start_persister(store)
    state = primaries(A, B)
    pending.offer(state)
    assert sync(ref) == 1
    inode = store.path.stat().st_ino
    # Equal lists, and a state that differs only in what is not saved.
    pending.offer(primaries(A, B))
    assert sync(ref) == 1
    pending.offer(ProxyState(state.active, state.primaries, publisher_seqs={"p": 3}))
    assert sync(ref) == 1
    assert len(store.saved) == 1
    assert store.path.stat().st_ino == inode
    # A real change is written again.
    pending.offer(primaries(A, B, C))
    assert sync(ref) == 2


def test_on_stop_writes_the_waiting_state(tmp_path: Path) -> None:
    """A state offered when no wake-up could be delivered is saved at stop."""
    store = StateFile(tmp_path / "state.json")
    pending = PendingState()
    pending.offer(primaries(C, D))  # before the persister exists: nobody to wake
    ref = PersistActor.start(store, pending)
    ref.stop(block=True, timeout=TIMEOUT)
    assert on_disk(store.path) == to_document(primaries(C, D))


def test_stop_after_offers_leaves_the_last_state_on_disk(tmp_path: Path) -> None:
    store = GatedStore(tmp_path / "state.json", gated=True)
    ref, pending = start_persister(store)
    pending.offer(numbered(1))
    assert store.entered.wait(TIMEOUT)
    pending.offer(numbered(2))
    pending.offer(numbered(3))
    stopped = threading.Thread(target=ref.stop, kwargs={"block": True, "timeout": TIMEOUT})
    stopped.start()
    assert store.gate is not None
    store.gate.set()
    stopped.join(TIMEOUT)
    assert not stopped.is_alive()
    assert on_disk(store.path) == to_document(numbered(3))


def test_a_state_offered_before_the_persister_started_does_not_block_later_writes(
    tmp_path: Path,
) -> None:
    """ProxyActor.on_start may offer before PersistActor.on_start set the target."""
    store = StateFile(tmp_path / "state.json")
    pending = PendingState()
    pending.offer(primaries(A))  # nobody to wake yet
    ref = PersistActor.start(store, pending)
    sync(ref)
    pending.offer(primaries(A, B))
    poll_until(
        lambda: on_disk(store.path) == to_document(primaries(A, B)),
        timeout=1.0,
        what="the second offer to be written",
    )
    ref.stop(block=True, timeout=TIMEOUT)


def test_a_failing_save_is_logged_and_the_persister_survives(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="rpcproxy.actors.persist")
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the directory should be")
    store = StateFile(blocker / "state.json")
    ref, pending = start_persister(store)
    pending.offer(primaries(A))
    assert sync(ref) == 0
    pending.offer(primaries(A, B))
    assert sync(ref) == 0
    assert ref.is_alive()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2, caplog.text
    assert all("could not save state" in r.getMessage() for r in errors)
    assert str(store.path) in errors[0].getMessage()


def test_after_a_failed_save_the_same_state_is_tried_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="rpcproxy.actors.persist")
    store = GatedStore(tmp_path / "state.json")
    store.fail_next = 1
    ref, pending = start_persister(store)
    pending.offer(primaries(A, B))
    assert sync(ref) == 0
    assert on_disk(store.path) is None
    assert "could not save state" in caplog.text
    # Not remembered as written: offering it again writes it.
    pending.offer(primaries(A, B))
    assert sync(ref) == 1
    assert on_disk(store.path) == to_document(primaries(A, B))
    assert ref.is_alive()


def test_offer_to_a_stopped_persister_does_not_raise(tmp_path: Path) -> None:
    store = StateFile(tmp_path / "state.json")
    ref, pending = start_persister(store)
    ref.stop(block=True, timeout=TIMEOUT)
    pending.offer(primaries(A))
    pending.offer(primaries(B))
    assert on_disk(store.path) is None


# --------------------------------------------------------------------------
# ProxyActor with a restored state and on_change.


def request(ref: pykka.ActorRef[ProxyActor], make: Callable[[Callable[[Any], None]], Any]) -> Any:
    future: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
    ref.tell(make(future.set))
    return future.get(timeout=TIMEOUT)


def test_proxy_actor_starts_from_the_restored_state_and_adds_configured_servers() -> None:
    restored = set_backups(primaries(B, A), [C])
    restored = ProxyState(
        restored.active, restored.primaries, restored.backups, num_nodes=40, leader_addr="b:1"
    )
    box = RecordingBox()
    settings_ = ProxySettings(
        local=LocalIdentity("dc1", 1, 1), primary_servers=(A, D), restored=restored
    )
    ref = ProxyActor.start(settings_, FakeProber(), box)
    assert ref.proxy().started().get(timeout=TIMEOUT) is True
    state = box.current.state
    # The saved order; the new configured primary stands before the backup C.
    assert state.active == (B, A, D, C)
    assert state.head == B
    assert (state.num_nodes, state.leader_addr) == (40, "b:1")
    check_invariant(state)


def test_every_change_of_the_proxy_actor_reaches_the_file(tmp_path: Path) -> None:
    store = StateFile(tmp_path / "state.json")
    pending = PendingState()
    persister = PersistActor.start(store, pending)
    sync(persister)
    box = RecordingBox()
    proxy = ProxyActor.start(
        ProxySettings(local=LocalIdentity("dc1", 1, 1)),
        FakeProber(),
        box,
        on_change=pending.offer,
    )
    assert proxy.proxy().started().get(timeout=TIMEOUT) is True
    request(proxy, lambda r: AddPrimary(A, r))
    request(proxy, lambda r: SetBackups((C,), r))
    request(proxy, lambda r: ApplyHeartbeat(hb((A, "dc1"), (B, "dc1"), num_nodes=7, leader="x"), r))
    final = box.current.state
    poll_until(lambda: on_disk(store.path) == to_document(final), what="the last change on disk")
    document = on_disk(store.path)
    assert document is not None
    assert from_document(document).active == final.active
    proxy.stop(block=True, timeout=TIMEOUT)
    persister.stop(block=True, timeout=TIMEOUT)
    assert on_disk(store.path) == to_document(final)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir()), os.listdir(tmp_path)


# --------------------------------------------------------------------------
# What a crash leaves, and paths that are not files (issue 9, rows 10 and 11).


def run_bounded(fn: Callable[[], T], timeout: float = GATE_TIMEOUT) -> T:
    """Run ``fn`` on a daemon thread: a call that hangs fails the test instead."""
    future: pykka.ThreadingFuture[T] = pykka.ThreadingFuture()

    def run() -> None:
        try:
            future.set(fn())
        except BaseException:
            future.set_exception()

    threading.Thread(target=run, daemon=True).start()
    result: T = future.get(timeout=timeout)  # pykka's ThreadingFuture.get returns Any
    return result


def test_an_interrupted_save_leaves_a_temporary_that_remove_leftovers_removes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill between writing the temporary and the rename, as kill -9 leaves it."""
    store = StateFile(tmp_path / "state.json")
    store.save(primaries(A))

    class Killed(BaseException):
        pass

    def killed(src: str, dst: str) -> None:
        # Copy the temporary aside before save's cleanup runs: that is the
        # file a real kill -9 would have left behind.
        Path(src).rename(src + ".kept")
        raise Killed

    monkeypatch.setattr("rpcproxy.actors.persist.os.replace", killed)
    with pytest.raises(Killed):
        store.save(primaries(B))
    (kept,) = tmp_path.glob("*.kept")
    left = kept.with_name(kept.name.removesuffix(".kept"))
    kept.rename(left)

    assert store.remove_leftovers() == [left]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    assert on_disk(store.path) == to_document(primaries(A))


def test_remove_leftovers_touches_only_this_files_temporaries(tmp_path: Path) -> None:
    store = StateFile(tmp_path / "state.json")
    store.save(primaries(A))
    ours = [".state.json.k2j4h5g6.tmp", ".state.json.abcd_123"]  # now, and mkstemp's old names
    theirs = [
        "state.json.tmp",
        ".state.json.bak",
        ".state.json.tmp",
        ".other.json.abcd1234",
        ".other.json.abcd1234.tmp",
        ".state.jsonx.abcd1234",
        "notes.txt",
    ]
    for name in ours + theirs:
        (tmp_path / name).write_text("x")
    (tmp_path / ".state.json.dir12345").mkdir()
    outside = tmp_path / "outside"
    outside.write_text("keep me")
    (tmp_path / ".state.json.link1234").symlink_to(outside)

    removed = store.remove_leftovers()

    assert sorted(p.name for p in removed) == sorted(ours)
    remaining = sorted(p.name for p in tmp_path.iterdir())
    expected = [*theirs, ".state.json.dir12345", ".state.json.link1234", "outside", "state.json"]
    assert remaining == sorted(expected)
    assert outside.read_text() == "keep me"


def test_remove_leftovers_in_a_missing_directory_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rpcproxy.actors.persist")
    assert StateFile(tmp_path / "gone" / "state.json").remove_leftovers() == []
    assert "leftover" in caplog.text


def test_check_accepts_a_missing_file_a_file_and_a_link_to_one(tmp_path: Path) -> None:
    StateFile(tmp_path / "missing.json").check()
    store = StateFile(tmp_path / "state.json")
    store.save(primaries(A))
    store.check()
    link = tmp_path / "link.json"
    link.symlink_to(store.path)
    StateFile(link).check()


def not_files(tmp_path: Path) -> dict[str, Path]:
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    directory = tmp_path / "dir.json"
    directory.mkdir()
    device = tmp_path / "device.json"
    device.symlink_to("/dev/zero")
    return {"a FIFO": fifo, "a directory": directory, "a character device": device}


@pytest.mark.parametrize("kind", ["a FIFO", "a directory", "a character device"])
def test_check_refuses_what_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    path = not_files(tmp_path)[kind]
    with pytest.raises(NotRegularFileError, match=f"is {kind}, not a regular file"):
        run_bounded(StateFile(path).check)


def test_load_of_a_fifo_raises_at_once_instead_of_waiting_for_a_writer(tmp_path: Path) -> None:
    """Even past check() (the path swapped meanwhile), load never blocks on it."""
    fifo = not_files(tmp_path)["a FIFO"]
    with pytest.raises(NotRegularFileError, match="is a FIFO"):
        run_bounded(StateFile(fifo).load)


def test_load_of_a_device_raises_instead_of_reading_without_end(tmp_path: Path) -> None:
    device = not_files(tmp_path)["a character device"]
    with pytest.raises(NotRegularFileError, match="is a character device"):
        run_bounded(StateFile(device).load)


def test_load_of_a_file_larger_than_any_state_starts_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rpcproxy.actors.persist")
    store = StateFile(tmp_path / "state.json")
    store.save(primaries(A, B, C))
    monkeypatch.setattr(
        "rpcproxy.actors.persist.MAX_STATE_FILE_BYTES", store.path.stat().st_size - 1
    )

    assert store.load() is None
    assert "larger than" in caplog.text and "starting empty" in caplog.text
