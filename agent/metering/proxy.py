"""The metering process: mitmproxy with only the addons metering needs, and Lantern's.

mitmdump loads 36 addons (replay, flow files, header and body rewriting, the onboarding app, a
flow printer, ...), and mitmproxy calls every one of them for every event of every flow: on a
metered chat call that dispatch took about a quarter of the proxy's CPU, which is the latency it
adds. This entry point builds a master with just the addons a metering proxy uses: the proxy
server, layer selection, TLS, host blocking, h2c refusal, the script loader (tests add a script),
error logging, and `LanternMeter`. What is absent cannot write: there is no flow file, no flow
printer and no onboarding app to turn off (DESIGN.md invariant 1). The event loop's selector
runs the addon's metering work whenever the loop would otherwise wait (`agent.metering.idle`).

Runs inside the metering environment (`agent.metering.venv`), started by the supervisor::

    python -I -m agent.metering.proxy --mode regular --listen-host 127.0.0.1 --listen-port 8080 \\
        [--mode transparent@::1:8080 ...] [-s SCRIPT ...] [--set NAME=VALUE ...]

The arguments mean what they mean to mitmdump; ``--set`` takes any option of these addons.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from mitmproxy import ctx, exceptions, master, options
from mitmproxy.addons import (
    block,
    core,
    disable_h2c,
    errorcheck,
    next_layer,
    proxyserver,
    script,
    tlsconfig,
)

from agent.metering.addon import LanternMeter
from agent.metering.idle import WORK, IdleSelector


class RefuseUnknownOptions:
    """Ends the process at start when a ``--set`` named an option nothing declared.

    mitmdump drops such a setting silently; a metering proxy started without, say, its upstream
    CA because of a typo must not run. Checked once running: scripts load (and declare their
    options) only after the event loop has started. An error logged now makes `ErrorCheck` end
    the process.
    """

    def running(self) -> None:
        unknown = sorted(ctx.options.deferred)
        if unknown:
            logging.getLogger("lantern.metering.proxy").error(
                "unknown option(s): %s", ", ".join(unknown)
            )


class MeteringMaster(master.Master):  # type: ignore[misc]  # mitmproxy is untyped here
    """mitmproxy's master with the addons metering needs; termlog prints errors to stdout."""

    def __init__(self, opts: options.Options) -> None:
        super().__init__(opts, with_termlog=True)
        self.addons.add(
            core.Core(),
            block.Block(),  # refuses clients from public addresses (block_global)
            disable_h2c.DisableH2C(),
            proxyserver.Proxyserver(),
            next_layer.NextLayer(),  # allow_hosts / ignore_hosts: which hosts are intercepted
            tlsconfig.TlsConfig(),
            script.ScriptLoader(),
            LanternMeter(),
            RefuseUnknownOptions(),
            errorcheck.ErrorCheck(),  # an error while starting ends the process
        )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lantern-metering-proxy", description=__doc__.splitlines()[0])
    p.add_argument("--mode", action="append", default=[], help="mitmproxy mode spec")
    p.add_argument("--listen-host", default="127.0.0.1")
    p.add_argument("--listen-port", type=int)
    p.add_argument("-s", "--scripts", action="append", default=[], metavar="SCRIPT")
    p.add_argument("--set", dest="setoptions", action="append", default=[], metavar="NAME=VALUE")
    return p


async def serve(args: argparse.Namespace) -> int:
    opts = options.Options()
    proxy = MeteringMaster(opts)
    try:
        # Deferred: options a script declares exist only once the script has loaded.
        opts.set(*args.setoptions, defer=True)
        update: dict[str, object] = {"mode": args.mode or ["regular"], "scripts": args.scripts}
        update["listen_host"] = args.listen_host
        if args.listen_port is not None:
            update["listen_port"] = args.listen_port
        opts.update(**update)
    except exceptions.OptionsError as exc:
        print(f"lantern-metering-proxy: {exc}", file=sys.stderr)
        return 2
    # mitmproxy logs every event at debug level; records below what is printed are never made.
    logging.getLogger().setLevel(opts.termlog_verbosity.upper())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, proxy.shutdown)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    await proxy.run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # The loop runs the addon's metering work whenever it would otherwise wait (idle.py).
    with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(IdleSelector(WORK))) as r:
        return r.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
