#!/usr/bin/python3
"""The name server's health check: dnsmasq answers the SRV name with records.

A real query over UDP to 127.0.0.1:53, built with the standard library (the
image has Debian's python3 and nothing else to ask DNS with). Exit 0 when the
reply is the answer to this query, NOERROR, with at least one record.

    dns_ready.py [NAME]      (default: _nomad._rpc.nomad.test)
"""

from __future__ import annotations

import secrets
import socket
import struct
import sys

SRV = 33
IN = 1
RD = 0x0100


def query(name: str, ident: int) -> bytes:
    labels = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".") if label)
    header = struct.pack("!HHHHHH", ident, RD, 1, 0, 0, 0)
    return header + labels + b"\0" + struct.pack("!HH", SRV, IN)


def main() -> int:
    name = sys.argv[1] if len(sys.argv) > 1 else "_nomad._rpc.nomad.test"
    ident = secrets.randbelow(1 << 16)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        sock.sendto(query(name, ident), ("127.0.0.1", 53))
        reply = sock.recv(65535)
    if len(reply) < 12:
        print(f"{name}: a reply of {len(reply)} bytes")
        return 1
    got, flags, _, answers = struct.unpack("!HHHH", reply[:8])
    rcode = flags & 0xF
    if got != ident or rcode != 0 or answers == 0:
        print(f"{name}: id {got} (asked {ident}), rcode {rcode}, {answers} answers")
        return 1
    print(f"{name}: {answers} SRV records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
