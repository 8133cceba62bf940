"""Attribution: who made an AI sighting — a local process and OS user, or a mapped gateway user.

Two attributors share one method, ``attribute(obs, match, transport) -> Attributed``:

* :class:`~agent.attribution.endpoint.EndpointAttributor` (workstations): socket → process → user.
* :class:`~agent.attribution.gateway.GatewayAttributor` (egress gateways): source IP → user.

:func:`build_attributor` picks one from the declared options.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Protocol

from agent.attribution.sockets import Transport
from agent.counters import Counters
from agent.options import Option, Options
from agent.records import Attributed, Observation
from signatures.matcher import Matcher
from signatures.model import Match


class Attributor(Protocol):
    def attribute(self, obs: Observation, match: Match, transport: Transport) -> Attributed: ...

    def close(self) -> None: ...


def declare_options(options: Options) -> None:
    options.declare(
        Option(
            "mode",
            str,
            "endpoint",
            "endpoint: attribute to local processes and OS users; gateway: to users mapped "
            "from source addresses.",
            choices=("endpoint", "gateway"),
        )
    )
    options.declare(
        Option(
            "gateway.user_map",
            Path,
            None,
            "Gateway mode: YAML or CSV file mapping source IPs and CIDRs to users; re-read "
            "when it changes. Unmapped addresses are reported as unknown:<ip>.",
        )
    )
    options.declare(
        Option(
            "device.name",
            str,
            socket.gethostname(),
            "The name this agent reports as its device (default: the host name).",
            check=lambda v: None if v.strip() else "must not be empty",
        )
    )


def build_attributor(options: Options, matcher: Matcher, counters: Counters) -> Attributor:
    """The attributor the options ask for (imports the endpoint's psutil only when used)."""
    device = options["device.name"]
    if options["mode"] == "gateway":
        from agent.attribution.gateway import GatewayAttributor  # noqa: PLC0415 - mode-specific

        return GatewayAttributor(options["gateway.user_map"], counters, device)
    from agent.attribution.endpoint import EndpointAttributor  # noqa: PLC0415 - needs psutil

    return EndpointAttributor(matcher, counters, device)
