"""Benchmark `lantern scan` against `tshark -T fields` on the same big capture.

Builds a capture of a few hundred thousand packets by repeating the public test captures
(timestamps shifted each round), then runs, in the same invocation and alternating order:

  lantern scan --all --json BIG      (the real CLI, a fresh process each run)
  tshark -n -r BIG -T fields -e tls.handshake.extensions_server_name -e gquic.tag.sni
         -e dns.qry.name -e dns.cname -e dns.svcb.targetname

It checks that both extract the same set of names (SNIs, DNS names), and prints packets/s for
each, the ratio, and each process's peak RSS. Medians over --runs runs.

    ./dev bench scan [--packets 300000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.capture.pcapfile import PcapFileSource  # noqa: E402

PCAPS = Path(os.environ.get("LANTERN_TESTDATA", ROOT.parent / "shared" / "testdata")) / "pcaps"
TSHARK_FIELDS = [
    "tls.handshake.extensions_server_name",
    "gquic.tag.sni",
    "dns.qry.name",
    "dns.cname",
    "dns.svcb.targetname",
]


def build_capture(out: Path, target_packets: int) -> int:
    """Repeat every public capture until ``target_packets``; write one pcapng (one interface
    per link type). Returns the packet count."""
    frames: list[tuple[float, int, bytes]] = []
    for path in sorted(PCAPS.glob("*.pcap*")):
        src = PcapFileSource(path)
        frames.extend((ts, lt, bytes(data)) for ts, lt, data in src.frames())
        src.close()
    linktypes = sorted({lt for _, lt, _ in frames})
    iface = {lt: i for i, lt in enumerate(linktypes)}
    t0 = min(ts for ts, _, _ in frames if ts > 0)
    span = max(ts for ts, _, _ in frames) - t0 + 60.0
    written = 0
    with out.open("wb") as f:
        f.write(_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)))
        for lt in linktypes:
            f.write(_block(1, struct.pack("<HHI", lt, 0, 262144)))
        rnd = 0
        while written < target_packets:
            shift = rnd * span
            for ts, lt, data in frames:
                t = int((max(ts, t0) - t0 + shift) * 1e6) + 1_600_000_000_000_000
                body = struct.pack(
                    "<IIIII", iface[lt], t >> 32, t & 0xFFFFFFFF, len(data), len(data)
                )
                f.write(_block(6, body + data + b"\0" * (-len(data) % 4)))
                written += 1
                if written >= target_packets:
                    break
            rnd += 1
    return written


def _block(btype: int, body: bytes) -> bytes:
    n = 12 + len(body)
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def run(cmd: list[str], stdout: int | None = None) -> tuple[float, int, bytes]:
    """Wall seconds, peak RSS in KiB of that one child, and its stdout."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read() if proc.stderr else b""
        if proc.returncode != 0:
            raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {err.decode()[:500]}")
        out.seek(0)
        return elapsed, usage.ru_maxrss, out.read()


def lantern_names(output: bytes) -> set[str]:
    names = set()
    for line in output.splitlines():
        obj = json.loads(line)
        if obj["proto"] in ("tls", "quic", "gquic", "dns"):
            names.add(obj["name"])
    return names


def tshark_names(output: bytes) -> set[str]:
    names = set()
    for line in output.decode("utf-8", "replace").splitlines():
        for cell in line.split("\t"):
            for name in cell.split(","):
                name = name.strip().lower().rstrip(".")
                if name and not name.startswith("<"):  # tshark placeholders like <Root>
                    names.add(name)
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--packets", type=int, default=300_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    tshark = shutil.which("tshark")
    if tshark is None:
        raise SystemExit("tshark not found: apt-get install tshark (./dev bench does it)")
    lantern = str(Path(sys.executable).with_name("lantern"))
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big.pcapng"
        n = build_capture(big, args.packets)
        size = big.stat().st_size
        print(f"capture: {n:,} packets, {size / 1e6:.1f} MB (public test captures repeated)")
        version = subprocess.run([lantern, "--version"], capture_output=True, text=True, check=True)
        print(version.stdout.strip())  # says whether the compiled decoders ran
        lcmd = [lantern, "scan", "--all", "--json", "--no-progress", str(big)]
        tcmd = [tshark, "-n", "-r", str(big), "-T", "fields", "-E", "occurrence=a"]
        for field in TSHARK_FIELDS:
            tcmd += ["-e", field]
        lt, lm, tt, tm = [], [], [], []
        lset = tset = set[str]()
        for i in range(args.runs):
            order = [("lantern", lcmd), ("tshark", tcmd)]
            for who, cmd in order if i % 2 == 0 else reversed(order):
                secs, rss, out = run(cmd)
                if who == "lantern":
                    lt.append(secs)
                    lm.append(rss)
                    lset = lantern_names(out)
                else:
                    tt.append(secs)
                    tm.append(rss)
                    tset = tshark_names(out)
        l_med, t_med = statistics.median(lt), statistics.median(tt)
        print(f"runs: {args.runs} each, alternating order; medians below")
        for label, med, rss in (("lantern scan ", l_med, lm), ("tshark fields", t_med, tm)):
            print(
                f"{label}: {n / med:>10,.0f} packets/s  {med:6.2f} s  "
                f"peak RSS {max(rss) / 1024:6.1f} MiB"
            )
        print(f"ratio        : lantern is {t_med / l_med:.1f}x tshark's speed")
        only_l, only_t = sorted(lset - tset), sorted(tset - lset)
        same = "identical" if not only_l and not only_t else "DIFFERENT"
        print(f"name sets    : {same}: {len(lset)} names from lantern, {len(tset)} from tshark")
        if only_l:
            print(f"  only lantern ({len(only_l)}): {', '.join(only_l[:20])}")
        if only_t:
            print(f"  only tshark ({len(only_t)}): {', '.join(only_t[:20])}")


if __name__ == "__main__":
    main()
