"""TEST-ONLY mitmproxy addon: every upstream connection goes to 127.0.0.1:test_upstream_port.

Lets the canary test and the proxy bench use real catalog hostnames (api.openai.com, ...) while
no byte leaves loopback. Never part of the product.
"""

from __future__ import annotations

from mitmproxy import ctx


class UpstreamRedirect:
    def __init__(self) -> None:
        self.original: dict[str, object] = {}

    def load(self, loader):  # type: ignore[no-untyped-def]
        loader.add_option("test_upstream_port", int, 0, "Loopback port all upstreams go to.")

    def server_connect(self, data):  # type: ignore[no-untyped-def]
        port = ctx.options.test_upstream_port
        if not port:
            raise RuntimeError("test_upstream_port is not set: refusing to connect anywhere")
        self.original[data.server.id] = data.server.address
        data.server.address = ("127.0.0.1", port)

    def server_connected(self, data):  # type: ignore[no-untyped-def]
        # Put the catalog name back once connected: mitmproxy reuses a keep-alive upstream
        # connection only for requests to the address it records (and refuses a plain
        # assignment on an open connection, hence object.__setattr__; test-only).
        original = self.original.pop(data.server.id, None)
        if original is not None:
            object.__setattr__(data.server, "address", original)

    def server_connect_error(self, data):  # type: ignore[no-untyped-def]
        self.original.pop(data.server.id, None)


addons = [UpstreamRedirect()]
