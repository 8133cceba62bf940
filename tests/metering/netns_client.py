"""TEST-ONLY: a workstation's AI client in the transparent-mode test, run in its namespace.

    ip netns exec NS python tests/metering/netns_client.py CONFIG.json

Builds its TLS context as root (trusting exactly the CA files CONFIG names), then becomes
CONFIG's ``user`` and makes each call by host name (the namespace's /etc/hosts maps the names),
one connection per call, as a program that knows nothing of a proxy. Prints one JSON line per
call: status, the address its socket is connected to, the SHA-256 and issuer of the
certificate it was shown, whether the answer canary came back. Keeps every connection open
until stdin closes (so the agent can find this process from its sockets), then exits.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import pwd
import ssl
import sys
from pathlib import Path

from cryptography import x509


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    ctx = ssl.create_default_context(cafile=config["cafiles"][0])
    for extra in config["cafiles"][1:]:
        ctx.load_verify_locations(cafile=extra)
    # The interpreter may live under root's home: load what is loaded lazily while still root.
    "warm".encode("idna")
    user = pwd.getpwnam(config["user"])
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)

    conns = []
    for call in config["calls"]:
        conn = http.client.HTTPSConnection(call["host"], 443, context=ctx, timeout=15)
        body = json.dumps(call["body"]).encode() if "body" in call else None
        headers = {"Content-Type": "application/json", **call.get("headers", {})}
        conn.request(call.get("method", "POST"), call["path"], body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        assert conn.sock is not None
        der = conn.sock.getpeercert(binary_form=True) or b""
        cert = x509.load_der_x509_certificate(der)
        print(
            json.dumps(
                {
                    "name": call["name"],
                    "status": resp.status,
                    "peer": list(conn.sock.getpeername()[:2]),
                    "cert_sha256": hashlib.sha256(der).hexdigest(),
                    "issuer": cert.issuer.rfc4514_string(),
                    "answer_seen": config["answer"].encode() in data,
                }
            ),
            flush=True,
        )
        conns.append(conn)
    print("done", flush=True)
    sys.stdin.read()
    for conn in conns:
        conn.close()


if __name__ == "__main__":
    main()
