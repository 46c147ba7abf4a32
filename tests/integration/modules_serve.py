"""``rpcproxy serve`` that, as it exits, writes the modules it had loaded.

Run as ``python modules_serve.py OUT serve ...``: exactly the real entry
point, ``cli.main.main``, in a real process; the list goes to ``OUT``, one
module a line. The product has no option for this; it lives here only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import rpcproxy.cli.main


def main(argv: list[str]) -> int:
    out, rest = Path(argv[0]), argv[1:]
    try:
        return rpcproxy.cli.main.main(rest)
    finally:
        out.write_text("\n".join(sorted(sys.modules)) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
