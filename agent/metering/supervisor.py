"""Starts, watches and stops the metering process (mitmproxy from its own environment).

    supervisor = MeteringSupervisor(options, counters)
    supervisor.start()            # CA, key secret, dirs; spawns the proxy; restarts it on exit
    supervisor.health()           # MeteringHealth: state, pid, restarts, last exit, CA fingerprint
    supervisor.stop()             # SIGTERM, then SIGKILL after `stop_timeout`

The process is ``python -I -m agent.metering.proxy`` from the metering environment: mitmproxy's
master with just the addons metering needs and Lantern's (`agent.metering.proxy`).

Layout under ``metering.dir`` (0700, owned by ``metering.user``)::

    mitmproxy/       mitmproxy's confdir: the per-device CA only (`agent.metering.ca`)
    key-secret       device secret for API-key fingerprints (0600)
    usage.sock       the agent's end of the usage channel (`agent.metering.usage.UsageReceiver`)
    mitmproxy.log    the process's stdout/stderr: errors only, never flows, bodies or headers

The CA certificate is exported (PEM and DER) into the agent's runtime dir for MDM to trust.

Modes: ``regular`` is an explicit proxy on ``listen_host:listen_port`` (set it with a PAC file or
``HTTPS_PROXY``). ``transparent`` (Linux) takes connections the admin redirects with iptables,
excluding the metering user's own traffic so the proxy does not loop::

    iptables  -t nat -A OUTPUT -p tcp --dport 443 -m owner ! --uid-owner lantern-meter \
              -j REDIRECT --to-ports 8118
    ip6tables -t nat -A OUTPUT -p tcp --dport 443 -m owner ! --uid-owner lantern-meter \
              -j REDIRECT --to-ports 8118

With ``metering.redirect: true`` the supervisor adds these rules itself (chain LANTERN-METER)
once the proxy listens and removes them whenever it is not running (`agent.metering.redirect`).

mitmproxy reads each redirected connection's original destination (SO_ORIGINAL_DST) and the
TLS SNI; only catalog hosts are intercepted, the rest is relayed as opaque TCP to where the
client was going. REDIRECT sends IPv4 connections to 127.0.0.1 and IPv6 ones to ::1, so with
the default ``listen_host`` (127.0.0.1) a transparent proxy listens on ::1 as well.

When the agent runs as root the process runs as ``metering.user``: the code that parses
untrusted TLS and HTTP holds no capabilities (no CAP_NET_RAW, no CAP_NET_ADMIN).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.attribution.sockets import TCP_LISTEN, SockDiag, SockDiagError
from agent.counters import Counters
from agent.exceptions import ConfigError
from agent.metering.ca import CaFiles, ensure_ca, export_certificate
from agent.metering.exceptions import RedirectError
from agent.metering.redirect import RedirectRules, missing_tools
from agent.metering.venv import DEFAULT_PATH as DEFAULT_VENV
from agent.metering.venv import mitmdump_path, python_path
from agent.options import Option, Options
from agent.state import StateDir

log = logging.getLogger("lantern.metering.supervisor")

PROXY_MODULE = "agent.metering.proxy"  # mitmproxy's master with Lantern's addon
SYSTEM_DIR = Path("/var/lib/lantern-meter")
LOG_MAX_BYTES = 1 << 20
MODES = ("regular", "transparent")


def declare_options(options: Options) -> None:
    def port_ok(v: int) -> str | None:
        return None if 1 <= v <= 65535 else "must be a TCP port (1-65535)"

    for opt in (
        Option(
            "metering.enabled",
            bool,
            False,
            "Run the metering proxy (mitmproxy) for token, cost and data-class metering of AI "
            "API calls. Needs the metering CA trusted on the device.",
        ),
        Option(
            "metering.mode",
            str,
            "regular",
            "regular: explicit/PAC proxy on listen_host:listen_port; transparent: Linux, "
            "connections redirected by iptables rules (metering.redirect, or the admin's; also "
            "listens on ::1 when listen_host is 127.0.0.1, for ip6tables' redirects).",
            choices=MODES,
        ),
        Option("metering.listen_host", str, "127.0.0.1", "Address the metering proxy listens on."),
        Option("metering.listen_port", int, 8118, "Port of the metering proxy.", check=port_ok),
        Option(
            "metering.venv",
            Path,
            None,
            "The metering environment (mitmproxy + Lantern). Default: .venv-meter next to the "
            "Lantern source (`python -m agent.metering.venv` creates it).",
        ),
        Option(
            "metering.user",
            str,
            "lantern-meter",
            "Unprivileged user the proxy runs as when the agent is root (ignored otherwise).",
        ),
        Option(
            "metering.dir",
            Path,
            None,
            "Metering state: CA, key secret, channel socket, log. Default: "
            "/var/lib/lantern-meter as root, <state.dir>/metering otherwise.",
        ),
        Option(
            "metering.confdir",
            Path,
            None,
            "mitmproxy's confdir (holds only the per-device CA). "
            "Default: <metering.dir>/mitmproxy.",
        ),
        Option(
            "metering.redirect",
            bool,
            False,
            "transparent mode: the agent adds the iptables/ip6tables REDIRECT rules itself "
            "(chain LANTERN-METER) once the proxy accepts connections, and removes them when it "
            "exits or stops, so HTTPS is never sent to a proxy that is not there. Needs root. "
            "Off: the admin adds the rules (README).",
        ),
        Option(
            "metering.upstream_ca",
            Path,
            None,
            "PEM bundle of the CAs the proxy trusts for AI servers, in place of mitmproxy's own "
            "(certifi). Set it where a TLS-inspecting proxy or a private CA stands in front of "
            "them, e.g. /etc/ssl/certs/ca-certificates.crt (the system's, with what "
            "update-ca-certificates added). Must be readable by metering.user.",
            check=lambda v: None if v is None or Path(v).is_file() else "no such file",
        ),
    ):
        options.declare(opt)


@dataclass(frozen=True, slots=True)
class MeteringPaths:
    dir: Path
    confdir: Path
    key_secret: Path
    socket: Path
    log: Path
    export_dir: Path  # public: the CA certificate for MDM

    @classmethod
    def from_options(cls, options: Options) -> MeteringPaths:
        state = StateDir.from_options(options)
        base: Path | None = options["metering.dir"]
        if base is None:
            base = SYSTEM_DIR if os.geteuid() == 0 else state.state / "metering"
        confdir: Path | None = options["metering.confdir"]
        return cls(
            dir=base,
            confdir=confdir or base / "mitmproxy",
            key_secret=base / "key-secret",
            socket=base / "usage.sock",
            log=base / "mitmproxy.log",
            export_dir=state.runtime,
        )


@dataclass(frozen=True, slots=True)
class MeteringHealth:
    state: str  # disabled, starting, running, restarting, stopped
    pid: int | None
    restarts: int
    last_exit: int | None
    listen: tuple[str, int]
    mode: str
    ca_fingerprint: str | None
    problems: tuple[str, ...] = ()


def ipv6_loopback() -> bool:
    """Whether this host (network namespace) has ::1 to listen on."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def _listening(port: int, uid: int) -> bool:
    """A TCP socket of ``uid`` listens on ``port`` in this network namespace (sock_diag)."""
    try:
        diag = SockDiag()
    except SockDiagError:
        return False
    try:
        for family in (socket.AF_INET, socket.AF_INET6):
            for s in diag.dump(family, "tcp", states=1 << TCP_LISTEN):
                if s.lport == port and s.uid == uid:
                    return True
    except OSError:
        return False
    finally:
        diag.close()
    return False


def _run_as(options: Options) -> tuple[int, int] | None:
    """(uid, gid) to drop to, or None when the agent is not root."""
    if os.geteuid() != 0:
        return None
    name = options["metering.user"]
    if not name or name == "root":
        raise ConfigError("metering.user: must name an unprivileged user when the agent is root")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"metering.user: no such user {name!r}") from None
    if entry.pw_uid == 0:
        raise ConfigError(f"metering.user: {name!r} has uid 0")
    return entry.pw_uid, entry.pw_gid


class MeteringSupervisor:
    """Owns the metering process: prepares its files, runs it, restarts it, stops it."""

    def __init__(
        self,
        options: Options,
        counters: Counters,
        *,
        paths: MeteringPaths | None = None,
        extra_args: Sequence[str] = (),
        min_backoff: float = 1.0,
        max_backoff: float = 60.0,
        stop_timeout: float = 5.0,
    ) -> None:
        self.options = options
        self.counters = counters
        self.paths = paths or MeteringPaths.from_options(options)
        self.extra_args = tuple(extra_args)
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.stop_timeout = stop_timeout
        self.mode: str = options["metering.mode"]
        self.listen: tuple[str, int] = (
            options["metering.listen_host"],
            options["metering.listen_port"],
        )
        venv: Path | None = options["metering.venv"]
        self.mitmdump = mitmdump_path(venv or DEFAULT_VENV)
        self.python = python_path(venv or DEFAULT_VENV)
        self.owner = _run_as(options)
        self.ca: CaFiles | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._state = "stopped" if options["metering.enabled"] else "disabled"
        self._restarts = 0
        self._last_exit: int | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self.redirect: RedirectRules | None = None  # set by prepare() with metering.redirect
        self._redirecting = False

    @property
    def uid(self) -> int:
        """The uid the metering process runs as: the one the usage channel accepts."""
        return self.owner[0] if self.owner is not None else os.geteuid()

    # -- setup ---------------------------------------------------------------------------------

    def prepare(self) -> CaFiles:
        """Directories, CA, key secret and exported certificate; safe to call again."""
        if self.mode == "transparent" and sys.platform != "linux":
            raise ConfigError("metering.mode: transparent is supported on Linux only")
        if self.options["metering.redirect"]:
            self.redirect = self._redirect_rules()
            self.redirect.remove()  # left by an agent that was killed: nothing listens now
        if not (self.mitmdump.exists() and self.python.exists()):
            raise ConfigError(
                f"metering.venv: no mitmproxy in {self.python.parent.parent}; create it with "
                "`python -m agent.metering.venv PATH`"
            )
        d = self.paths.dir
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        d.chmod(0o700)
        if self.owner is not None:
            os.chown(d, *self.owner)
        self.ca = ensure_ca(self.paths.confdir, owner=self.owner)
        export_certificate(self.ca, self.paths.export_dir)
        if not self.paths.key_secret.exists():
            fd = os.open(self.paths.key_secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, secrets.token_hex(32).encode())
            finally:
                os.close(fd)
        if self.owner is not None:
            os.chown(self.paths.key_secret, *self.owner)
        return self.ca

    def listen_addresses(self) -> list[tuple[str, int]]:
        """Where the proxy listens: ``listen``, and ::1 too for a transparent proxy on 127.0.0.1
        (ip6tables' REDIRECT delivers there)."""
        host, port = self.listen
        addresses = [(host, port)]
        if self.mode == "transparent" and host == "127.0.0.1" and ipv6_loopback():
            addresses.append(("::1", port))
        return addresses

    def _redirect_rules(self) -> RedirectRules:
        if self.mode != "transparent":
            raise ConfigError("metering.redirect: only with metering.mode transparent")
        if os.geteuid() != 0:
            raise ConfigError("metering.redirect: the agent must run as root to set iptables rules")
        tools = ["iptables", *(["ip6tables"] if ipv6_loopback() else [])]
        missing = missing_tools(tools)
        if missing:
            raise ConfigError(f"metering.redirect: {', '.join(missing)} not found")
        return RedirectRules(self.listen[1], self.uid, tools)

    def _set_redirect(self, on: bool) -> None:
        """Add or remove the REDIRECT rules; a failure is logged and counted, never raised
        (the proxy still serves explicit clients)."""
        if self.redirect is None:
            return
        with self._lock:
            if on == self._redirecting or (on and self._stopping.is_set()):
                return
            try:
                if on:
                    self.redirect.install()
                else:
                    self.redirect.remove()
            except (RedirectError, OSError, subprocess.SubprocessError) as exc:
                log.error("metering redirect: %s", exc)
                self.counters.inc("metering.redirect.failed")
                return
            self._redirecting = on
            self.counters.inc("metering.redirect.on" if on else "metering.redirect.off")

    def _await_listening(self, proc: subprocess.Popen[bytes]) -> bool:
        """True once the proxy listens on its port; False if it exits or we stop first.
        Asked of the kernel (sock_diag), not by connecting: a connection made straight to a
        transparent proxy has no original destination but the proxy itself. Only the proxy's
        uid counts, so another program holding the port does not pass for it."""
        while not self._stopping.is_set() and proc.poll() is None:
            if _listening(self.listen[1], self.uid):
                return True
            self._stopping.wait(0.1)
        return False

    def command(self) -> list[str]:
        host, port = self.listen
        if self.mode == "transparent":
            # One mode spec per address (mitmproxy: MODE@HOST:PORT, HOST may be IPv6).
            listen = [
                a for h, p in self.listen_addresses() for a in ("--mode", f"transparent@{h}:{p}")
            ]
        else:
            listen = ["--mode", self.mode, "--listen-host", host, "--listen-port", str(port)]
        return [
            str(self.python),
            "-I",  # no PYTHON* variables, no user site, not the working directory on sys.path
            "-m",
            PROXY_MODULE,
            *listen,
            # Invariant 1: the master has no flow file, flow printer or onboarding app
            # (agent.metering.proxy); it prints errors only.
            "--set",
            f"confdir={self.paths.confdir}",
            "--set",
            "termlog_verbosity=error",
            "--set",
            f"lantern_channel={self.paths.socket}",
            "--set",
            f"lantern_key_secret={self.paths.key_secret}",
            "--set",
            f"lantern_agent_pid={os.getpid()}",  # it ends when the agent does (lifeline.py)
            *self._upstream_trust(),
            *self.extra_args,
        ]

    def _upstream_trust(self) -> list[str]:
        ca: Path | None = self.options["metering.upstream_ca"]
        return [] if ca is None else ["--set", f"ssl_verify_upstream_trusted_ca={ca}"]

    def _env(self) -> dict[str, str]:
        keep = ("PATH", "LANG", "LC_ALL", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR")
        env = {k: v for k, v in os.environ.items() if k in keep}
        env["HOME"] = str(self.paths.dir)  # nothing may land in a real home directory
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        return env

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        if not self.options["metering.enabled"]:
            self._state = "disabled"
            return
        self.prepare()
        self._stopping.clear()
        self._state = "starting"
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="metering-watch", daemon=True)
        self._watcher.start()

    def _spawn(self) -> None:
        log_path = self.paths.log
        with contextlib.suppress(FileNotFoundError):
            if log_path.stat().st_size > LOG_MAX_BYTES:
                log_path.unlink()
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            if self.owner is not None:
                os.fchown(fd, *self.owner)
            proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                cwd=self.paths.dir,
                env=self._env(),
                start_new_session=True,
                user=self.owner[0] if self.owner else None,
                group=self.owner[1] if self.owner else None,
                extra_groups=[] if self.owner else None,
                umask=0o077,
            )
        finally:
            os.close(fd)
        with self._lock:
            self._proc = proc
            self._state = "running"
        self.counters.inc("metering.process.started")

    def _watch(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            proc = self._proc
            if proc is None:
                return
            started = time.monotonic()
            if self.redirect is not None and self._await_listening(proc):
                self._set_redirect(True)
            code = proc.wait()
            self._set_redirect(False)  # at once: HTTPS goes direct while there is no proxy
            self._last_exit = code
            if self._stopping.is_set():
                return
            self.counters.inc("metering.process.exited")
            log.warning("metering process exited with %s; restarting", code)
            failures = 0 if time.monotonic() - started > 60 else failures + 1
            backoff = min(self.max_backoff, self.min_backoff * 2 ** max(failures - 1, 0))
            self._state = "restarting"
            if self._stopping.wait(backoff):
                return
            self._restarts += 1
            try:
                self._spawn()
            except OSError as exc:
                log.error("cannot restart the metering process: %s", exc)
                self.counters.inc("metering.process.spawn_failed")
                failures += 1

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``stop_timeout``; waits for the watcher."""
        self._stopping.set()
        self._set_redirect(False)  # before the proxy goes: new connections go direct
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                self.counters.inc("metering.process.killed")
            self._last_exit = proc.returncode
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        if self._state != "disabled":
            self._state = "stopped"

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """True once the proxy accepts connections (False on timeout or if it exits)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(OSError), socket.create_connection(self.listen, 0.5):
                    return True
            time.sleep(0.1)
        return False

    def health(self) -> MeteringHealth:
        proc = self._proc
        running = proc is not None and proc.poll() is None
        problems: list[str] = []
        if self._state in ("running", "restarting") and not running:
            problems.append("metering process is not running")
        if self._restarts:
            problems.append(f"metering process restarted {self._restarts} times")
        if self.redirect is not None and running and not self._redirecting:
            problems.append("transparent redirect rules are not in place")
        return MeteringHealth(
            state=self._state,
            pid=proc.pid if running and proc is not None else None,
            restarts=self._restarts,
            last_exit=self._last_exit,
            listen=self.listen,
            mode=self.mode,
            ca_fingerprint=self.ca.fingerprint_sha256 if self.ca is not None else None,
            problems=tuple(problems),
        )
