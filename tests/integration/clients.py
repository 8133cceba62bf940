"""Clients for the namespace tests, run as test users inside the agent namespace.

    python clients.py tls CAFILE NAME...     resolve NAME through DNS, then a real TLS handshake
    python clients.py quic NAME IP           one QUIC Initial (aioquic) to IP:443
    python clients.py ech RESOLVE_NAME       resolve, then a hello with SNI cloudflare-ech.com + ECH

With ``--as USER`` first, the client drops from root to USER after importing what it needs
(the interpreter may live where other users cannot read), before it opens any socket: the
kernel then records USER as every socket's owner, which is what the agent must find.
Prints one line per connection made.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
import time
from pathlib import Path


def tls(cafile: str, names: list[str]) -> None:
    context = ssl.create_default_context(cafile=cafile)
    for name in names:
        ip = socket.gethostbyname(name)
        with (
            socket.create_connection((ip, 443), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=name) as conn,
        ):
            conn.sendall(b"hello")
            print(f"tls {name} {ip} {conn.version()}", flush=True)
            # stay open past a housekeeping tick, which reads the byte counters
            time.sleep(2.5)


def quic(name: str, ip: str) -> None:
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    conn = QuicConnection(configuration=QuicConfiguration(is_client=True, server_name=name))
    now = time.time()
    conn.connect((ip, 443), now=now)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((ip, 443))
    for data, _addr in conn.datagrams_to_send(now=now):
        sock.send(data)
    print(f"quic {name} {ip}", flush=True)
    time.sleep(0.5)  # keep the socket so its owner can be found
    sock.close()


def ech(name: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.factories import make_client_hello

    ip = socket.gethostbyname(name)
    hello = make_client_hello("cloudflare-ech.com", ech=True)
    with socket.create_connection((ip, 443), timeout=5) as raw:
        raw.sendall(hello)
        print(f"ech {name} {ip}", flush=True)
        time.sleep(0.3)


def drop_to(user: str) -> None:
    import pwd

    entry = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[0] == "--as":
        import aioquic.quic.connection  # noqa: F401 - import before dropping privileges

        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        import tests.factories  # noqa: F401

        drop_to(args[1])
        args = args[2:]
    kind, rest = args[0], args[1:]
    if kind == "tls":
        tls(rest[0], rest[1:])
    elif kind == "quic":
        quic(rest[0], rest[1])
    elif kind == "ech":
        ech(rest[0])
    else:
        raise SystemExit(f"unknown client kind {kind}")
