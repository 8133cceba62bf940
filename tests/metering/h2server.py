"""The HTTP/2 side of the test provider: one TLS connection served with the `h2` state machine.

`FakeProvider` hands a connection here when ALPN chose ``h2``; each request becomes the same
`Received` the HTTP/1.1 handler makes (``host`` taken from ``:authority``, ``protocol`` set to
``HTTP/2``) and is answered with the route's `Reply`: its chunks are sent as DATA frames one by
one (so a streamed answer reaches the client event by event), ``hold_after_first`` waits after
the first. Replies are small, well inside the peer's flow-control window.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import h2.config
import h2.connection
import h2.events

from tests.metering.proxykit import Received, Reply


def serve_h2_connection(sock: socket.socket, answer: Callable[[Received], Reply]) -> None:
    """Serves requests on ``sock`` (TLS, ALPN h2) until the peer closes it."""
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
    )
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    streams: dict[int, tuple[list[tuple[str, str]], bytearray]] = {}
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            return
        if not data:
            return
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                headers = [(str(k), str(v)) for k, v in event.headers or ()]
                streams[event.stream_id] = (headers, bytearray())
            elif isinstance(event, h2.events.DataReceived):
                streams[event.stream_id][1].extend(event.data or b"")
                conn.acknowledge_received_data(
                    event.flow_controlled_length or 0, event.stream_id or 0
                )
            elif isinstance(event, h2.events.StreamEnded):
                headers, body = streams.pop(event.stream_id or 0)
                sock.sendall(conn.data_to_send())
                _respond(sock, conn, event.stream_id or 0, headers, bytes(body), answer)
            elif isinstance(event, h2.events.ConnectionTerminated):
                sock.sendall(conn.data_to_send())
                return
        out = conn.data_to_send()
        if out:
            sock.sendall(out)


def _respond(
    sock: socket.socket,
    conn: h2.connection.H2Connection,
    stream_id: int,
    headers: list[tuple[str, str]],
    body: bytes,
    answer: Callable[[Received], Reply],
) -> None:
    pseudo = {k: v for k, v in headers if k.startswith(":")}
    plain = [(k, v) for k, v in headers if not k.startswith(":")]
    got = Received(
        pseudo[":method"],
        pseudo[":path"],
        [("host", pseudo[":authority"]), *plain],
        body,
        protocol="HTTP/2",
    )
    reply = answer(got)
    out = [(":status", str(reply.status))]
    out += [(name.lower(), value) for name, value in reply.headers]
    if not reply.chunked:  # HTTP/2 has no chunked coding: a stream simply has no length
        out.append(("content-length", str(sum(len(c) for c in reply.chunks))))
    conn.send_headers(stream_id, out, end_stream=not reply.chunks)
    sock.sendall(conn.data_to_send())
    for i, chunk in enumerate(reply.chunks):
        conn.send_data(stream_id, chunk, end_stream=i == len(reply.chunks) - 1)
        sock.sendall(conn.data_to_send())
        if i == 0 and reply.hold_after_first is not None and len(reply.chunks) > 1:
            reply.hold_after_first.wait(15)
