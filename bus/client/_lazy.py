"""A module imported on first use, for the asyncio client's dependencies.

``import rpcproxy`` loads the client library, and so does ``rpcproxy serve``
(its package's ``__init__``), which never runs an event loop. asyncio and
``zmq.asyncio`` are about 7 MiB of an idle proxy's memory; the asyncio
client's modules reach them through a :class:`LazyModule` instead, which
imports on the first attribute read (in an asyncio program, where they are
loaded already) and then keeps each attribute it has handed out, so later
reads cost what a plain attribute does.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for the module ``name`` until an attribute of it is read."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        # Only called for attributes not found on the instance: each is kept
        # after its first read.
        if attr.startswith("__"):
            raise AttributeError(attr)
        if self._module is None:
            self._module = importlib.import_module(self._name)
        value = getattr(self._module, attr)
        setattr(self, attr, value)
        return value
