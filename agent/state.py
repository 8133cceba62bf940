"""Where the agent keeps its state (spool, socket, status file) and the status file itself.

Two directories: a private one for the spool (mode 0700: only root or the running user reads
what was recorded) and a public runtime one (0755) for the local API socket, which every employee
must reach for `lantern me`, and the status file of aggregate counters. As root the defaults are
/var/lib/lantern and /run/lantern; otherwise both are ``$XDG_STATE_HOME/lantern``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.exceptions import StatusError
from agent.options import Option, Options
from agent.spool import SpoolStats

SYSTEM_STATE = Path("/var/lib/lantern")
SYSTEM_RUNTIME = Path("/run/lantern")
STATUS_MAX_AGE = 30.0  # seconds; the service rewrites the file every few seconds


def declare_options(options: Options) -> None:
    options.declare(
        Option(
            "state.dir",
            Path,
            None,
            "Private directory for the spool (created 0700). Default: /var/lib/lantern as "
            "root, $XDG_STATE_HOME/lantern otherwise.",
        )
    )
    options.declare(
        Option(
            "state.runtime_dir",
            Path,
            None,
            "Directory for the local API socket and the status file; must be reachable by "
            "every local user. Default: /run/lantern as root, the state directory otherwise.",
        )
    )
    options.declare(
        Option(
            "spool.max_rows",
            int,
            200_000,
            "Most sessions kept in the spool; past it the oldest are dropped (sent ones first) "
            "and counted in spool.dropped.",
            check=lambda v: None if isinstance(v, int) and v >= 100 else "must be at least 100",
        )
    )


def _user_state() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "lantern"


@dataclass(frozen=True, slots=True)
class StateDir:
    state: Path  # private: the spool
    runtime: Path  # public: socket and status file

    @classmethod
    def system(cls) -> StateDir:
        return cls(SYSTEM_STATE, SYSTEM_RUNTIME)

    @classmethod
    def default(cls) -> StateDir:
        if os.geteuid() == 0:
            return cls.system()
        return cls(_user_state(), _user_state())

    @classmethod
    def at(cls, state: Path, runtime: Path | None = None) -> StateDir:
        return cls(state, runtime or state)

    @classmethod
    def from_options(cls, options: Options) -> StateDir:
        default = cls.default()
        state: Path | None = options["state.dir"]
        runtime: Path | None = options["state.runtime_dir"]
        if state is None:
            return cls(default.state, runtime or default.runtime)
        return cls(state, runtime or state)

    @property
    def spool(self) -> Path:
        return self.state / "spool.db"

    @property
    def socket(self) -> Path:
        return self.runtime / "agent.sock"

    @property
    def status_file(self) -> Path:
        return self.runtime / "status.json"

    def create(self) -> None:
        """Create both directories; only a directory created here has its mode set."""
        for path, mode in ((self.state, 0o700), (self.runtime, 0o755)):
            if not path.exists():
                path.mkdir(mode=mode, parents=True)
                path.chmod(mode)  # mkdir's mode is masked by the umask


def client_candidates(explicit: StateDir | None = None) -> list[StateDir]:
    """Where a client looks for a running agent: the given dir, else this user's, then system."""
    if explicit is not None:
        return [explicit]
    out = [StateDir.default()]
    if StateDir.system() not in out:
        out.append(StateDir.system())
    return out


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """What the running agent reports about itself: aggregate numbers only, never sessions."""

    pid: int
    started: float
    updated: float
    health: str  # "ok", "degraded", "stopping"
    problems: tuple[str, ...] = ()
    counters: dict[str, int] = field(default_factory=dict)
    spool: SpoolStats | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["problems"] = list(self.problems)
        return out

    @classmethod
    def from_json(cls, data: Any) -> AgentStatus:
        try:
            spool = data.get("spool")
            return cls(
                pid=int(data["pid"]),
                started=float(data["started"]),
                updated=float(data["updated"]),
                health=str(data["health"]),
                problems=tuple(str(p) for p in data.get("problems", ())),
                counters={str(k): int(v) for k, v in data.get("counters", {}).items()},
                spool=SpoolStats(**spool) if spool is not None else None,
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise StatusError(f"not an agent status: {exc}") from exc

    def is_current(self, now: float | None = None, max_age: float = STATUS_MAX_AGE) -> bool:
        """Written recently by a process that still exists."""
        now = time.time() if now is None else now
        if now - self.updated > max_age:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # exists, owned by another user
        return True


def write_status(path: Path, status: AgentStatus) -> None:
    """Replace the status file atomically (readers see the old or the new file, never half)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".status-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(status.to_json(), f, sort_keys=True)
            f.flush()
            os.fchmod(f.fileno(), 0o644)  # aggregate counters only: any local user may read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_status(path: Path) -> AgentStatus:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise StatusError(f"no status file at {path}") from exc
    except OSError as exc:
        raise StatusError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise StatusError(f"{path}: not valid JSON: {exc}") from exc
    return AgentStatus.from_json(data)
