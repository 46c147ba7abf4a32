"""The layers, held by the imports written in the code (read with ``ast``, never run).

The service's transport (``bus/service``, ``cli``) -> ``actors`` -> ``proxy``;
the client library (``bus/client``) depends only on the wire vocabulary
(``bus/wire``); the stand-ins (``bus/standins``) are for demos and tests, and
nothing in the service imports them. A failure names the file and line of
each import that breaks a rule, and the rule.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
"""The repository root, which is the package ``rpcproxy``."""

PACKAGE_DIRS = ("proxy", "actors", "bus", "cli", "sim")
OLD_TOP_LEVEL = frozenset(PACKAGE_DIRS)
"""What the subpackages were called before they were ``rpcproxy.``'s."""

OTHER_CODE_DIRS = ("tests", "bench", "examples")


@dataclass(frozen=True)
class Import:
    """One module's import of another, and where it is written."""

    importer: str
    imported: str
    where: str

    def __str__(self) -> str:
        return f"{self.where}: {self.importer} imports {self.imported}"


def module_name(root: Path, path: Path) -> str:
    """``bus/service/codec.py`` -> ``rpcproxy.bus.service.codec`` (packages by their folder)."""
    parts = ["rpcproxy", *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_files(root: Path) -> list[Path]:
    # The root's modules: __init__.py and the top-level ones (testing.py).
    files = sorted(root.glob("*.py"))
    for folder in PACKAGE_DIRS:
        files += sorted((root / folder).rglob("*.py"))
    return files


def _imports_in(path: Path) -> Iterable[tuple[int, int, str | None, tuple[str, ...]]]:
    """(line, level, module, names) of every import statement, even under TYPE_CHECKING."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, 0, alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, node.level, node.module, tuple(a.name for a in node.names)


def read_imports(root: Path) -> list[Import]:
    """Every import of an rpcproxy module by an rpcproxy module.

    ``from rpcproxy.bus import wire`` counts as importing ``rpcproxy.bus.wire``
    (a module), and relative imports are resolved against their package.
    """
    files = package_files(root)
    modules = {module_name(root, path) for path in files}
    found: list[Import] = []
    for path in files:
        importer = module_name(root, path)
        package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
        where_prefix = path.relative_to(root).as_posix()
        for line, level, written, names in _imports_in(path):
            module = written
            if level:
                base = package.rsplit(".", level - 1)[0] if level > 1 else package
                module = f"{base}.{written}" if written else base
            if module is None or not (module == "rpcproxy" or module.startswith("rpcproxy.")):
                continue
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in modules]
            for target in targets or [module]:
                found.append(Import(importer, target, f"{where_prefix}:{line}"))
    return found


# --------------------------------------------------------------------------
# The rules.


def layer(module: str) -> str:
    """``rpcproxy.bus.service.codec`` -> ``bus/service``; ``rpcproxy.actors.x`` -> ``actors``."""
    parts = module.split(".")[1:]
    if not parts:
        return "rpcproxy"
    if parts[0] == "bus" and len(parts) > 1:
        return f"bus/{parts[1]}"
    return parts[0]


ALLOWED: dict[str, frozenset[str]] = {
    "proxy": frozenset({"proxy"}),
    "log_gate": frozenset({"log_gate"}),
    "actors": frozenset({"actors", "proxy", "log_gate"}),
    "bus/wire": frozenset({"bus/wire"}),
    "bus/net": frozenset({"bus/net", "proxy"}),
    "bus/client": frozenset({"bus/client", "bus/net", "bus/wire"}),
    "bus/service": frozenset({"bus/service", "bus/net", "bus/wire", "actors", "proxy", "log_gate"}),
    "bus/probes": frozenset({"bus/probes", "bus/net", "bus/wire", "actors", "proxy", "log_gate"}),
    "bus/standins": frozenset(
        {"bus/standins", "bus/service", "bus/probes", "bus/net", "bus/client", "bus/wire", "proxy"}
    ),
    "sim": frozenset({"sim", "proxy"}),
    "bus": frozenset({"bus"}),
    "rpcproxy": frozenset({"bus/client"}),
    "testing": frozenset({"testing", "bus/client", "bus/service", "bus/wire", "actors", "proxy"}),
}
"""What each layer may import; ``cli`` is the top and may import any of them."""

WINGS = ("bus/service", "bus/probes", "bus/client")
"""The three wings of ``bus``: what ``serve`` binds, what probes servers, what users import.

None imports another; what they share stands on neutral ground
(``bus/net``, ``bus/wire``).
"""

WHY: dict[str, str] = {
    "proxy": "proxy is the pure domain: it imports no other rpcproxy package",
    "log_gate": "log_gate is a logging utility under every layer: it imports nothing of rpcproxy",
    "actors": (
        "actors import only actors, proxy and log_gate (layers: transport -> actors -> proxy)"
    ),
    "bus/wire": "bus/wire is the shared vocabulary: it imports nothing of rpcproxy",
    "bus/net": "bus/net is neutral ground under every wing: it imports only itself and proxy",
    "bus/client": "the client library imports only bus/client, bus/net and bus/wire",
    "bus/service": (
        "the transport imports bus/service, bus/net, bus/wire, actors, proxy and log_gate only:"
        " never the probes, the stand-ins, the client library or cli"
    ),
    "bus/probes": (
        "the probes import bus/probes, bus/net, bus/wire, actors, proxy and log_gate only:"
        " never the service's sockets, the client library or cli"
    ),
    "bus/standins": (
        "stand-ins use the wire, the service's pieces, the probes and the client,"
        " never actors or cli"
    ),
    "sim": "the simulator imports only sim and proxy",
    "bus": "bus/__init__ only documents its subpackages",
    "rpcproxy": "the top-level package holds the client's names only (its facade, bus/client)",
    "testing": (
        "rpcproxy.testing (users' test doubles) imports the client, the wire, the service's"
        " op rows, the actors' core and the pure domain only: never a socket's wing"
        " (probes, stand-ins) nor cli"
    ),
}


def is_allowed(imp: Import) -> bool:
    source, target = layer(imp.importer), layer(imp.imported)
    if source == "cli":
        return True
    return target in ALLOWED[source]


def wing_edges(imports: Iterable[Import]) -> list[str]:
    """Imports from one wing of ``bus`` into another (each already breaks its layer rule)."""
    return [
        f"{imp}\n    breaks: no wing of bus imports another ({', '.join(WINGS)})"
        for imp in imports
        if layer(imp.importer) in WINGS
        and layer(imp.imported) in WINGS
        and layer(imp.importer) != layer(imp.imported)
    ]


def layer_violations(imports: Iterable[Import]) -> list[str]:
    return [
        f"{imp}\n    breaks: {WHY[layer(imp.importer)]}" for imp in imports if not is_allowed(imp)
    ]


SERVICE_ENTRY = ("rpcproxy.cli.service", "rpcproxy.cli.config")
"""The service's modules outside proxy, actors and bus/service."""


def _parents(module: str) -> list[str]:
    """Importing ``a.b.c`` runs ``a`` and ``a.b`` first."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def reachable(imports: Iterable[Import], start: Iterable[str]) -> dict[str, list[Import]]:
    """Every module loaded by importing ``start``, each with the chain that loads it."""
    graph: dict[str, list[Import]] = {}
    for imp in imports:
        graph.setdefault(imp.importer, []).append(imp)
    chains: dict[str, list[Import]] = {m: [] for m in start}
    todo = deque(chains)  # breadth first: each chain is a shortest one
    while todo:
        module = todo.popleft()
        steps = list(graph.get(module, []))
        steps += [Import(module, parent, "(package)") for parent in _parents(module)]
        for step in steps:
            if step.imported not in chains:
                chains[step.imported] = [*chains[module], step]
                todo.append(step.imported)
    return chains


def _chain(steps: list[Import]) -> str:
    return "\n".join(f"    {step}" for step in steps)


def forbidden_reach(
    imports: list[Import], start: Iterable[str], forbidden: Callable[[str], bool], rule: str
) -> list[str]:
    chains = reachable(imports, start)
    # Name only where a chain first steps into forbidden ground, not all it loads from there.
    return [
        f"{module} is loaded, which {rule}:\n{_chain(chain)}"
        for module, chain in sorted(chains.items())
        if forbidden(module) and not any(forbidden(step.imported) for step in chain[:-1])
    ]


def service_violations(imports: list[Import]) -> list[str]:
    modules = {imp.importer for imp in imports} | {imp.imported for imp in imports}
    start = [m for m in modules if layer(m) in {"proxy", "actors", "bus/service"}]
    return forbidden_reach(
        imports,
        [*start, *SERVICE_ENTRY],
        lambda m: layer(m) == "bus/standins",
        "nothing in the service (proxy, actors, bus/service, cli/service.py,"
        " cli/config.py) may import, even through another module",
    )


CLIENT_MAY_LOAD = frozenset({"rpcproxy", "bus", "bus/client", "bus/net", "bus/wire"})


def client_violations(imports: list[Import]) -> list[str]:
    modules = {imp.importer for imp in imports} | {imp.imported for imp in imports}
    start = ["rpcproxy", *(m for m in modules if layer(m) == "bus/client")]
    return forbidden_reach(
        imports,
        start,
        lambda m: layer(m) not in CLIENT_MAY_LOAD,
        "a client process (``from rpcproxy import ProxyClient``) must never load",
    )


def old_name_violations(root: Path) -> list[str]:
    """Absolute imports of ``proxy``, ``actors``, ``bus``, ``cli`` or ``sim`` anywhere."""
    files = package_files(root)
    for folder in OTHER_CODE_DIRS:
        files += sorted((root / folder).rglob("*.py"))
    found = []
    for path in files:
        for line, level, module, _ in _imports_in(path):
            if level == 0 and module and module.split(".")[0] in OLD_TOP_LEVEL:
                found.append(
                    f"{path.relative_to(root).as_posix()}:{line}: imports {module}\n"
                    f"    breaks: the code is one package; write rpcproxy.{module}"
                )
    return found


def facade_names(root: Path) -> dict[str, frozenset[str]]:
    """Each package whose ``__init__`` writes ``__all__`` as a list: the names it exports."""
    found = {}
    for init in sorted(root.rglob("__init__.py")):
        if init.parent == root or not any(
            init.is_relative_to(root / folder) for folder in PACKAGE_DIRS
        ):
            continue  # the root exports the client's facade; every module is inside it
        tree = ast.parse(init.read_text(encoding="utf-8"))
        for node in tree.body:
            if (
                isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
                and isinstance(node.value, ast.List)
            ):
                names = {e.value for e in node.value.elts if isinstance(e, ast.Constant)}
                found[module_name(root, init)] = frozenset(str(n) for n in names)
    return found


def facade_violations(root: Path) -> list[str]:
    """Imports of a facade's public name from a module behind it, by code outside its package."""
    facades = facade_names(root)
    files = package_files(root)
    for folder in OTHER_CODE_DIRS:
        files += sorted((root / folder).rglob("*.py"))
    found = []
    for path in files:
        importer = module_name(root, path)
        for line, level, module, names in _imports_in(path):
            if level or not module:
                continue
            for package, public in facades.items():
                inside = importer == package or importer.startswith(package + ".")
                if inside or not module.startswith(package + "."):
                    continue
                found += [
                    f"{path.relative_to(root).as_posix()}:{line}: imports {name} from {module}\n"
                    f"    breaks: a public name is imported from its package's facade, {package}"
                    for name in names
                    if name in public
                ]
    return found


def _report(problems: list[str]) -> str:
    return f"{len(problems)} import(s) break the layers:\n" + "\n".join(problems)


# --------------------------------------------------------------------------
# The repository holds them.


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return read_imports(ROOT)


def test_the_imports_are_read(imports: list[Import]) -> None:
    # A reader that found nothing would pass every rule below.
    pairs = {(imp.importer, imp.imported) for imp in imports}
    assert ("rpcproxy.bus.client._client", "rpcproxy.bus.wire") in pairs
    assert ("rpcproxy.actors.proxy_actor", "rpcproxy.proxy") in pairs
    assert ("rpcproxy.testing", "rpcproxy.proxy") in pairs


def test_each_layer_imports_only_what_it_may(imports: list[Import]) -> None:
    problems = layer_violations(imports)
    assert not problems, _report(problems)


def test_nothing_in_the_service_loads_the_stand_ins(imports: list[Import]) -> None:
    problems = service_violations(imports)
    assert not problems, _report(problems)


def test_the_client_library_loads_only_the_wire_vocabulary(imports: list[Import]) -> None:
    problems = client_violations(imports)
    assert not problems, _report(problems)


def test_importing_the_client_really_loads_only_the_client() -> None:
    # The same rule seen from a fresh interpreter, where an import the reader
    # cannot see (importlib, __import__) would show up too.
    code = (
        "import sys\n"
        "from rpcproxy import ProxyClient\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith('rpcproxy')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    loaded = set(out.split())
    assert "rpcproxy.bus.client._client" in loaded
    assert "rpcproxy.bus.client._aio" in loaded
    assert {m for m in loaded if layer(m) not in CLIENT_MAY_LOAD} == set()


def test_no_wing_of_bus_imports_another(imports: list[Import]) -> None:
    problems = wing_edges(imports)
    assert not problems, _report(problems)


def test_public_names_are_imported_from_their_facade() -> None:
    problems = facade_violations(ROOT)
    assert not problems, _report(problems)


def test_nothing_imports_the_old_top_level_names() -> None:
    problems = old_name_violations(ROOT)
    assert not problems, _report(problems)


# --------------------------------------------------------------------------
# The rules catch what they are for: bad imports planted in a small tree.


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for folder in PACKAGE_DIRS:
        (root / folder).mkdir(exist_ok=True)
    return root


_GOOD = {
    "__init__.py": "from rpcproxy.bus.client import ProxyClient\n",
    "log_gate.py": "import logging\n",
    "proxy/__init__.py": "",
    "actors/__init__.py": (
        "from rpcproxy.proxy import state\nfrom rpcproxy.log_gate import PeerLog\n"
    ),
    "bus/__init__.py": "",
    "bus/wire.py": "import msgspec\n",
    "bus/net/__init__.py": "",
    "bus/net/keys.py": "import zmq\n",
    "bus/net/loop.py": "import zmq\n",
    "bus/client/__init__.py": (
        "from rpcproxy.bus.client._client import ProxyClient\n__all__ = ['ProxyClient']\n"
    ),
    "bus/client/_client.py": "from rpcproxy.bus import wire\nfrom ..net.keys import CurveClient\n",
    "testing.py": "from rpcproxy.bus.client import ProxyClient\nfrom rpcproxy.proxy import state\n",
    "bus/service/__init__.py": "",
    "bus/service/metrics.py": "",
    "bus/service/query.py": (
        "from rpcproxy.actors import ProxyActor\nfrom rpcproxy.bus.net.keys import KeyPair\n"
    ),
    "bus/probes/__init__.py": "",
    "bus/probes/engine.py": (
        "from rpcproxy.bus.net.loop import Waker\nfrom rpcproxy.proxy import state\n"
    ),
    "bus/standins/__init__.py": "",
    "bus/standins/publisher.py": "",
    "bus/standins/standin.py": "from rpcproxy.bus.service import query\n",
    "cli/__init__.py": "",
    "cli/service.py": (
        "from rpcproxy.bus.service.query import QueryServer\n"
        "from rpcproxy.bus.probes.engine import WindowedProber\n"
    ),
    "cli/demo.py": "from rpcproxy.bus.standins.standin import ServerStandIn\n",
    "tests/test_client.py": (
        "from rpcproxy.bus.client import ProxyClient\n"
        "from rpcproxy.bus.client._client import check\n"
    ),
}


def _all_problems(root: Path) -> list[str]:
    imports = read_imports(root)
    return [
        *layer_violations(imports),
        *wing_edges(imports),
        *service_violations(imports),
        *client_violations(imports),
        *old_name_violations(root),
        *facade_violations(root),
    ]


def test_a_tree_that_keeps_the_layers_passes(tmp_path: Path) -> None:
    assert _all_problems(_tree(tmp_path, _GOOD)) == []


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (
            "proxy/state.py",
            "from rpcproxy.actors import ProxyActor\n",
            "proxy/state.py:1: rpcproxy.proxy.state imports rpcproxy.actors\n"
            "    breaks: proxy is the pure domain",
        ),
        (
            "actors/timer.py",
            "if True:\n    from rpcproxy.bus.service import metrics\n",
            "actors/timer.py:2: rpcproxy.actors.timer imports rpcproxy.bus.service.metrics\n"
            "    breaks: actors import only actors, proxy and log_gate",
        ),
        (
            "bus/client/_client.py",
            "from ..service.codec import ErrorCode\n",
            "bus/client/_client.py:1: rpcproxy.bus.client._client imports"
            " rpcproxy.bus.service.codec\n    breaks: the client library",
        ),
        (
            "bus/service/query.py",
            "from rpcproxy.bus.probes.engine import WindowedProber\n",
            "bus/service/query.py:1: rpcproxy.bus.service.query imports"
            " rpcproxy.bus.probes.engine\n    breaks: no wing of bus imports another",
        ),
        (
            "bus/probes/engine.py",
            "from rpcproxy.bus.service import metrics\n",
            "breaks: the probes import",
        ),
        (
            "bus/probes/engine.py",
            "from rpcproxy.bus.client._client import ProxyClient\n",
            "breaks: no wing of bus imports another",
        ),
        (
            "bus/net/loop.py",
            "from rpcproxy.bus.service import metrics\n",
            "breaks: bus/net is neutral ground",
        ),
        (
            "log_gate.py",
            "from rpcproxy.actors import ProxyActor\n",
            "breaks: log_gate is a logging utility",
        ),
        (
            "cli/demo.py",
            "from rpcproxy.bus.client._client import ProxyClient\n",
            "cli/demo.py:1: imports ProxyClient from rpcproxy.bus.client._client"
            "\n    breaks: a public name is imported from its package's facade",
        ),
        (
            "tests/test_client.py",
            "from rpcproxy.bus.client._client import ProxyClient\n",
            "tests/test_client.py:1: imports ProxyClient from rpcproxy.bus.client._client",
        ),
        (
            "bus/wire.py",
            "from rpcproxy.proxy import Address\n",
            "bus/wire.py:1: rpcproxy.bus.wire imports rpcproxy.proxy\n    breaks: bus/wire",
        ),
        (
            "bus/service/events.py",
            "from rpcproxy.bus.standins import publisher\n",
            "bus/service/events.py:1: rpcproxy.bus.service.events imports"
            " rpcproxy.bus.standins.publisher\n    breaks: the transport",
        ),
        (
            "bus/service/events.py",
            "from rpcproxy.bus.client import ProxyClient\n",
            "breaks: the transport imports",
        ),
        (
            "cli/config.py",
            "from rpcproxy.cli import demo\n",
            "rpcproxy.bus.standins.standin is loaded, which nothing in the service",
        ),
        (
            "bus/net/keys.py",
            "import rpcproxy.sim\n",
            "rpcproxy.sim is loaded, which a client process",
        ),
        (
            "__init__.py",
            "from rpcproxy.testing import MockTransport\n",
            "rpcproxy.testing is loaded, which a client process",
        ),
        (
            "testing.py",
            "from rpcproxy.bus.probes import NomadProber\n",
            "testing.py:1: rpcproxy.testing imports rpcproxy.bus.probes\n"
            "    breaks: rpcproxy.testing",
        ),
        ("sim/fleet.py", "from proxy import Address\n", "sim/fleet.py:1: imports proxy"),
        ("tests/test_x.py", "import bus.client\n", "tests/test_x.py:1: imports bus.client"),
    ],
)
def test_a_planted_import_is_named_with_the_rule_it_breaks(
    tmp_path: Path, name: str, text: str, expected: str
) -> None:
    problems = _all_problems(_tree(tmp_path, {**_GOOD, name: text}))
    assert problems, f"planting {text!r} in {name} went unnoticed"
    assert any(expected in problem for problem in problems), _report(problems)
