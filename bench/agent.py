"""Benchmark the live agent's capture + name extraction against `tcpdump -w /dev/null`.

Builds an Ethernet capture of mixed traffic (the public test captures, repeated, plus bulk
TCP: 1400-byte data segments and bare ACKs, so mostly non-AI), then for each rate replays it
with tcpreplay over a veth pair between two fresh network namespaces and measures, on the
capturing end:

  agent    LiveSource (kernel BPF filter) + NameExtractor.on_frame, in its own process
  tcpdump  tcpdump -n -i VETH -B 8192 -w /dev/null   (captures everything: the C floor)

For each: packets/s offered (tcpreplay's achieved rate), frames delivered to user space,
kernel drops, CPU % of one core over the replay, and peak RSS (VmHWM). Medians over --runs.
The rate doubles from --rate up to --max-rate; the highest rate with zero drops is reported.
Needs root, `ip netns`, and tcpreplay (apt-get install tcpreplay).

    sudo .venv/bin/python bench/agent.py [--rate 20000] [--max-rate 160000] [--runs 3]
        [--seconds 8] [--packets 300000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.capture.pcapfile import PcapFileSource  # noqa: E402

PCAPS = Path(os.environ.get("LANTERN_TESTDATA", ROOT.parent / "shared" / "testdata")) / "pcaps"
MTU = 9000
LINKTYPE_ETHERNET = 1
_RAW_LINKTYPES = {101, 12, 14, 228, 229}


# --- building the capture --------------------------------------------------------------------


def _ether(payload: bytes, v6: bool) -> bytes:
    return (
        b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01"
        + (b"\x86\xdd" if v6 else b"\x08\x00")
        + payload
    )


def _bulk_frames() -> list[bytes]:
    """A downloads-and-uploads mix: per flow, data segments one way and bare ACKs back."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    out = []
    for flow in range(64):
        a, b = f"10.201.{flow}.2", f"10.202.{flow % 7}.9"
        sport = 40000 + flow
        for i in range(8):
            seq = 1000 + i * 1400
            out.append(
                bytes(
                    eth
                    / IP(src=b, dst=a)
                    / TCP(sport=443, dport=sport, flags="A", seq=seq)
                    / Raw(b"\x17" * 1400)
                )
            )
            out.append(
                bytes(eth / IP(src=a, dst=b) / TCP(sport=sport, dport=443, flags="A", ack=seq))
            )
    return out


def build_capture(out: Path, target_packets: int) -> dict[str, int]:
    """Write a pcap of ``target_packets`` Ethernet frames: 60 % bulk TCP, 40 % the public
    captures (link types other than Ethernet and raw IP are left out)."""
    public: list[bytes] = []
    for path in sorted(PCAPS.glob("*.pcap*")):
        src = PcapFileSource(path)
        for _, lt, data in src.frames():
            if lt == LINKTYPE_ETHERNET:
                frame = bytes(data)
            elif lt in _RAW_LINKTYPES and data:
                frame = _ether(bytes(data), data[0] >> 4 == 6)
            else:
                continue
            if 14 <= len(frame) <= MTU + 14:
                public.append(frame)
        src.close()
    bulk = _bulk_frames()
    counts = {"public": 0, "bulk": 0}
    with out.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_ETHERNET))
        pi = bi = 0
        for n in range(target_packets):
            if n % 5 < 2:
                frame = public[pi % len(public)]
                pi += 1
                counts["public"] += 1
            else:
                frame = bulk[bi % len(bulk)]
                bi += 1
                counts["bulk"] += 1
            f.write(
                struct.pack("<IIII", 1_700_000_000 + n // 1000, n % 1000, len(frame), len(frame))
            )
            f.write(frame)
    return counts


# --- the agent side (runs inside the capture namespace) --------------------------------------


def capture_main(iface: str, ready: str) -> None:
    from agent.capture.live import LiveSource
    from agent.counters import Counters
    from agent.pipeline import NameExtractor

    counters = Counters()
    src = LiveSource([iface], counters)
    extractor = NameExtractor(counters)
    signal.signal(signal.SIGTERM, lambda *_: src.stop())
    Path(ready).touch()
    observations = 0
    on_frame = extractor.on_frame
    for ts, lt, frame in src.frames():
        observations += len(on_frame(ts, lt, frame))
    stats = src.stats()
    src.close()
    print(
        json.dumps(
            {
                "delivered": stats.read,
                "dropped": stats.kernel_dropped,
                "observations": observations,
            }
        )
    )


# --- the driver --------------------------------------------------------------------------------


@dataclass
class Result:
    offered_pps: float
    delivered: int
    dropped: int
    cpu_percent: float
    peak_rss_mb: float


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def setup_namespaces(tag: str) -> tuple[str, str, str, str]:
    rx_ns, tx_ns, rx_if, tx_if = f"{tag}rx", f"{tag}tx", f"{tag}r", f"{tag}t"
    sh("ip", "netns", "add", rx_ns)
    sh("ip", "netns", "add", tx_ns)
    sh("ip", "link", "add", rx_if, "netns", rx_ns, "type", "veth", "peer", "name", tx_if,
       "netns", tx_ns)  # fmt: skip
    for ns, dev in ((rx_ns, rx_if), (tx_ns, tx_if)):
        sh("ip", "-n", ns, "link", "set", dev, "mtu", str(MTU), "up")
    return rx_ns, tx_ns, rx_if, tx_if


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_once(
    tool: str, rate: int, count: int, pcap: Path, nss: tuple[str, str, str, str], tmp: Path
) -> Result:
    rx_ns, tx_ns, rx_if, tx_if = nss
    ready = tmp / f"ready-{time.monotonic_ns()}"
    if tool == "agent":
        cmd = [sys.executable, str(Path(__file__).resolve()), "--capture", rx_if, str(ready)]
    else:
        cmd = ["tcpdump", "-n", "-i", rx_if, "-B", "8192", "-w", "/dev/null"]
    proc = subprocess.Popen(
        ["ip", "netns", "exec", rx_ns, *cmd],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        end = time.monotonic() + 30
        if tool == "agent":
            while not ready.exists() and time.monotonic() < end and proc.poll() is None:
                time.sleep(0.05)
        else:
            assert proc.stderr is not None
            while "listening on" not in proc.stderr.readline() and time.monotonic() < end:
                pass
        time.sleep(0.3)
        ps = psutil.Process(proc.pid)  # `ip netns exec` execs the command: same pid
        c0, t0 = ps.cpu_times(), time.monotonic()
        replay = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                tx_ns,
                "tcpreplay",
                "-q",
                "-i",
                tx_if,
                f"--pps={rate}",
                f"--limit={count}",
                str(pcap),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        time.sleep(0.5)  # let the reader drain what is queued
        c1, t1 = ps.cpu_times(), time.monotonic()
        rss = peak_rss_mb(proc.pid)
        proc.send_signal(signal.SIGTERM if tool == "agent" else signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    m = re.search(r"Rated: [\d.]+ Bps, [\d.]+ Mbps, ([\d.]+) pps", replay.stdout + replay.stderr)
    offered = float(m.group(1)) if m else float("nan")
    cpu = 100.0 * ((c1.user + c1.system) - (c0.user + c0.system)) / (t1 - t0)
    if tool == "agent":
        stats = json.loads(out.strip().splitlines()[-1])
        delivered, dropped = stats["delivered"], stats["dropped"]
    else:
        delivered = int(re.search(r"(\d+) packets? captured", err).group(1))  # type: ignore[union-attr]
        dropped = int(re.search(r"(\d+) packets? dropped by kernel", err).group(1))  # type: ignore[union-attr]
    return Result(offered, delivered, dropped, cpu, rss)


def median(results: list[Result]) -> Result:
    return Result(
        statistics.median(r.offered_pps for r in results),
        int(statistics.median(r.delivered for r in results)),
        int(statistics.median(r.dropped for r in results)),
        statistics.median(r.cpu_percent for r in results),
        statistics.median(r.peak_rss_mb for r in results),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rate", type=int, default=20000, help="first rate, packets/s")
    ap.add_argument("--max-rate", type=int, default=160000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0, help="replay length per run")
    ap.add_argument("--packets", type=int, default=300000, help="size of the built capture")
    ap.add_argument("--capture", nargs=2, metavar=("IFACE", "READY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.capture:
        capture_main(*args.capture)
        return
    if os.geteuid() != 0:
        sys.exit("bench/agent.py needs root (network namespaces, packet capture)")
    for tool in ("tcpreplay", "tcpdump", "ip"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (apt-get install -y {tool})")
    tag = f"lb{os.getpid() % 100000}"
    with tempfile.TemporaryDirectory(prefix="lantern-bench-") as tmpdir:
        tmp = Path(tmpdir)
        pcap = tmp / "mixed.pcap"
        mix = build_capture(pcap, args.packets)
        print(f"capture: {sum(mix.values())} frames ({mix['public']} from public captures, "
              f"{mix['bulk']} bulk TCP data/ACK)")  # fmt: skip
        nss = setup_namespaces(tag)
        try:
            rows: list[tuple[int, Result, Result]] = []
            rate = args.rate
            best = {"agent": 0, "tcpdump": 0}
            while rate <= args.max_rate:
                count = min(args.packets, int(rate * args.seconds))
                got: dict[str, list[Result]] = {"agent": [], "tcpdump": []}
                for _ in range(args.runs):
                    for tool in ("agent", "tcpdump"):  # alternate, so drift hits both
                        got[tool].append(run_once(tool, rate, count, pcap, nss, tmp))
                a, t = median(got["agent"]), median(got["tcpdump"])
                rows.append((rate, a, t))
                for tool, r in (("agent", a), ("tcpdump", t)):
                    if r.dropped == 0 and all(x.dropped == 0 for x in got[tool]):
                        best[tool] = max(best[tool], rate)
                print_row(rate, a, t, flush=True)
                if a.dropped and t.dropped:
                    break
                if a.offered_pps < 0.9 * rate:
                    print(f"  tcpreplay reached only {a.offered_pps:.0f} pps: sender-bound")
                    break
                rate *= 2
            print()
            print(f"highest rate with zero drops (every run): agent {best['agent']} pps, "
                  f"tcpdump {best['tcpdump']} pps (tested up to {rows[-1][0]})")  # fmt: skip
        finally:
            for ns in nss[:2]:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


_printed_header = False


def print_row(rate: int, a: Result, t: Result, flush: bool = False) -> None:
    global _printed_header  # noqa: PLW0603 - a header once per table
    if not _printed_header:
        print(
            f"{'rate':>7} {'tool':>8} {'offered/s':>10} {'to user':>9} {'drops':>6} "
            f"{'CPU %':>6} {'peak RSS MB':>11}"
        )
        _printed_header = True
    for name, r in (("agent", a), ("tcpdump", t)):
        print(
            f"{rate:>7} {name:>8} {r.offered_pps:>10.0f} {r.delivered:>9} {r.dropped:>6} "
            f"{r.cpu_percent:>6.1f} {r.peak_rss_mb:>11.1f}"
        )
    ratio = a.cpu_percent / t.cpu_percent if t.cpu_percent else float("nan")
    print(f"{'':>7} {'ratio':>8}   agent/tcpdump CPU {ratio:.2f}x, RSS "
          f"{a.peak_rss_mb / t.peak_rss_mb:.2f}x", flush=flush)  # fmt: skip


if __name__ == "__main__":
    main()
