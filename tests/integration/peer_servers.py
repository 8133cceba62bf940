"""A DNS server and a TLS server for the namespace tests (run inside the peer namespace).

    python peer_servers.py --bind 10.231.0.2 --cert C --key K name=ip [name=ip ...]

Answers A queries for the given names (NXDOMAIN otherwise) and accepts TLS on 443, reading and
discarding what clients send. Prints "ready" once both listen.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import sys
import threading

import dns.message
import dns.rcode
import dns.rrset


def dns_server(sock: socket.socket, names: dict[str, str]) -> None:
    while True:
        data, addr = sock.recvfrom(4096)
        try:
            query = dns.message.from_wire(data)
        except Exception:  # a test server answers what it can parse
            continue
        response = dns.message.make_response(query)
        qname = query.question[0].name.to_text().rstrip(".").lower()
        if query.question[0].rdtype == 1 and qname in names:
            response.answer.append(
                dns.rrset.from_text(query.question[0].name, 300, "IN", "A", names[qname])
            )
        elif query.question[0].rdtype != 1 and qname in names:
            pass  # NOERROR, no data: AAAA and HTTPS queries
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        sock.sendto(response.to_wire(), addr)


def tls_server(sock: socket.socket, context: ssl.SSLContext) -> None:
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=_serve, args=(conn, context), daemon=True).start()


def _serve(conn: socket.socket, context: ssl.SSLContext) -> None:
    try:
        with context.wrap_socket(conn, server_side=True) as tls:
            while tls.recv(65536):
                pass
    except (OSError, ssl.SSLError):
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bind", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("names", nargs="*")
    args = ap.parse_args()
    names = dict(n.split("=", 1) for n in args.names)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((args.bind, 53))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("0.0.0.0", 443))  # every address the names resolve to
    tcp.listen(64)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    threading.Thread(target=dns_server, args=(udp, names), daemon=True).start()
    threading.Thread(target=tls_server, args=(tcp, context), daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()  # runs until the test closes stdin or kills it


if __name__ == "__main__":
    main()
