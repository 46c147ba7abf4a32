"""The names a user imports: listed once, and shown as ``rpcproxy``'s."""

from __future__ import annotations

import ast
import pickle
import traceback
from pathlib import Path

import rpcproxy
import rpcproxy.bus.client as facade
from rpcproxy import ProxyTimeoutError

ROOT = Path(rpcproxy.__file__).resolve().parent


def _written_all(path: Path) -> list[str]:
    """The names a module's ``__all__`` lists literally (nothing when it has none)."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
            and isinstance(node.value, ast.List)
        ):
            return [str(e.value) for e in node.value.elts if isinstance(e, ast.Constant)]
    return []


def test_repr_and_traceback_name_the_package_users_import() -> None:
    assert repr(ProxyTimeoutError) == "<class 'rpcproxy.ProxyTimeoutError'>"
    try:
        raise ProxyTimeoutError("no reply")
    except ProxyTimeoutError as exc:
        shown = "".join(traceback.format_exception(exc))
    assert "rpcproxy.ProxyTimeoutError: no reply" in shown
    assert "_results" not in shown.splitlines()[-1]


def test_every_public_class_says_it_is_rpcproxys_and_still_pickles() -> None:
    classes = [
        getattr(rpcproxy, n) for n in rpcproxy.__all__ if isinstance(getattr(rpcproxy, n), type)
    ]
    assert len(classes) > 15
    assert [c for c in classes if c.__module__ != "rpcproxy"] == []
    # pickle finds a class by __module__ and __qualname__: rpcproxy.X must exist.
    error = pickle.loads(pickle.dumps(ProxyTimeoutError("no reply")))
    assert type(error) is ProxyTimeoutError and str(error) == "no reply"


def test_the_public_names_are_written_once() -> None:
    assert rpcproxy.__all__ == ["__version__", *facade.__all__]
    assert _written_all(ROOT / "__init__.py") == ["__version__"]
    private = [
        p for p in sorted((ROOT / "bus" / "client").glob("_*.py")) if p.name != "__init__.py"
    ]
    assert private  # the modules behind the facade
    listed_again = {p.name: _written_all(p) for p in private if _written_all(p)}
    assert listed_again == {}


def test_every_public_name_resolves() -> None:
    for name in rpcproxy.__all__:
        assert getattr(rpcproxy, name) is not None, name
