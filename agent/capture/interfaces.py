"""Network interfaces on Linux: listing them and finding the ones that carry a default route."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.exceptions import CaptureError

SYS_NET = Path("/sys/class/net")
PROC_ROUTE = Path("/proc/net/route")
PROC_IPV6_ROUTE = Path("/proc/net/ipv6_route")

# linux/if_arp.h
ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
ARPHRD_NONE = 0xFFFE
# linux/route.h
_RTF_UP = 0x0001
_RTF_REJECT = 0x0200
_IFF_UP = 0x1


@dataclass(frozen=True, slots=True)
class Interface:
    """One network interface as the kernel reports it in sysfs."""

    name: str
    index: int
    arphrd: int  # link type (ARPHRD_*), decides the capture framing
    up: bool
    mtu: int


def list_interfaces(sys_net: Path = SYS_NET) -> list[Interface]:
    """Every interface in this network namespace, sorted by index."""
    out = []
    try:
        entries = list(sys_net.iterdir())
    except OSError as exc:
        raise CaptureError(f"cannot list network interfaces in {sys_net}: {exc.strerror}") from exc
    for entry in entries:
        try:
            out.append(
                Interface(
                    name=entry.name,
                    index=int((entry / "ifindex").read_text()),
                    arphrd=int((entry / "type").read_text()),
                    up=bool(int((entry / "flags").read_text(), 16) & _IFF_UP),
                    mtu=int((entry / "mtu").read_text()),
                )
            )
        except (OSError, ValueError):
            continue  # removed while we read it, or not an interface directory
    return sorted(out, key=lambda i: i.index)


def interface(name: str, sys_net: Path = SYS_NET) -> Interface:
    """The named interface, or CaptureError listing the ones that exist."""
    found = list_interfaces(sys_net)
    for iface in found:
        if iface.name == name:
            return iface
    names = ", ".join(i.name for i in found) or "none"
    raise CaptureError(f"no network interface named {name!r} (interfaces: {names})")


def default_interfaces(route: Path = PROC_ROUTE, ipv6_route: Path = PROC_IPV6_ROUTE) -> list[str]:
    """Interfaces with an IPv4 or IPv6 default route, in the order the tables list them.

    These carry the traffic to the internet, so they are what an endpoint captures by default.
    Raises CaptureError when there is none (an offline machine, or a namespace without routes).
    """
    names: list[str] = []
    for name in _v4_defaults(route) + _v6_defaults(ipv6_route):
        if name not in names:
            names.append(name)
    if not names:
        raise CaptureError(
            f"no interface carries a default route ({route}, {ipv6_route} have none): "
            "name the interfaces to capture with capture.interfaces, or set capture.any: true"
        )
    return names


def _v4_defaults(path: Path) -> list[str]:
    out = []
    for fields in _rows(path, skip_header=True):
        # Iface Destination Gateway Flags RefCnt Use Metric Mask ...
        if len(fields) < 8:
            continue
        flags = int(fields[3], 16)
        if fields[1] == "00000000" and fields[7] == "00000000" and flags & _RTF_UP:
            out.append(fields[0])
    return out


def _v6_defaults(path: Path) -> list[str]:
    out = []
    for fields in _rows(path, skip_header=False):
        # dest prefixlen src srcprefixlen nexthop metric refcnt use flags iface
        if len(fields) < 10:
            continue
        flags = int(fields[8], 16)
        if (
            int(fields[0], 16) == 0
            and fields[1] == "00"
            and flags & _RTF_UP
            and not flags & _RTF_REJECT
            and fields[9] != "lo"
        ):
            out.append(fields[9])
    return out


def _rows(path: Path, *, skip_header: bool) -> list[list[str]]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []  # no IPv6 in this kernel, or no /proc: the other table may still answer
    except OSError as exc:
        raise CaptureError(f"cannot read the routing table {path}: {exc.strerror}") from exc
    if skip_header:
        lines = lines[1:]
    return [line.split() for line in lines if line.strip()]
