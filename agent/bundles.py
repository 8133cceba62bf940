"""Signed catalog and policy bundles: pull from the collector, verify, keep the last good one.

A bundle is used only after ``collector.bundle_verify.verify_bundle`` accepted it with the key
the agent was configured with (``bundles.public_key_file``), never a key the collector sends, so
a compromised path to the collector cannot change what the agent matches. A refused bundle is
counted (``bundles.refused``), shown as a problem, and the last good one stays in use.

On disk: ``<state>/bundles/<kind>/<version>/<files>`` and ``<state>/bundles/<kind>/current``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent.counters import Counters
from agent.exceptions import AgentError, BundleError, CollectorError, ConfigError
from agent.options import Option, Options
from agent.transport import SignedBundle, Transport

log = logging.getLogger("lantern.agent.bundles")


def declare_options(options: Options) -> None:
    options.declare(
        Option(
            "bundles.public_key_file",
            Path,
            None,
            "Ed25519 public key (PEM) that signs the collector's catalog and policy bundles. "
            "Unset: the agent pulls no bundles and uses its built-in catalog.",
        )
    )
    options.declare(
        Option(
            "bundles.interval",
            float,
            900.0,
            "Seconds between checks for new bundles.",
            check=lambda v: None if v >= 10 else "must be at least 10",
        )
    )


Verify = Callable[[SignedBundle, bytes], dict[str, bytes]]
Apply = Callable[[str, Path], None]  # kind, directory of the verified files; raises to refuse


def collector_verify(bundle: SignedBundle, public_key: bytes) -> dict[str, bytes]:
    from collector.bundle_verify import BundleVerifyError, verify_bundle  # noqa: PLC0415

    try:
        return verify_bundle(bundle, public_key).files
    except BundleVerifyError as exc:
        raise BundleError(str(exc)) from exc


class BundleClient:
    """Pulls each kind, verifies it, unpacks it beside the last good one, then applies it."""

    def __init__(
        self,
        directory: Path,
        public_key: bytes,
        *,
        kinds: tuple[str, ...] = ("catalog", "policy"),
        counters: Counters | None = None,
        apply: Apply | None = None,
        verify: Verify = collector_verify,
    ) -> None:
        self.dir = directory
        self.public_key = public_key
        self.kinds = kinds
        self.counters = counters if counters is not None else Counters()
        self.apply = apply
        self.verify = verify
        self.refusals: dict[str, str] = {}

    @classmethod
    def from_options(
        cls, options: Options, state_dir: Path, counters: Counters, apply: Apply | None = None
    ) -> BundleClient | None:
        path: Path | None = options["bundles.public_key_file"]
        if path is None:
            return None
        try:
            key = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"bundles.public_key_file: cannot read {path}: {exc}") from exc
        return cls(state_dir / "bundles", key, counters=counters, apply=apply)

    def version(self, kind: str) -> str:
        try:
            return (self.dir / kind / "current").read_text().strip()
        except FileNotFoundError:
            return ""

    def current(self, kind: str) -> Path | None:
        """The directory of the last good bundle of ``kind``, None when there is none."""
        v = self.version(kind)
        return self.dir / kind / v if v else None

    def poll(self, transport: Transport) -> list[str]:
        """Check every kind once; return the kinds updated. CollectorError passes through."""
        updated = []
        for kind in self.kinds:
            have = self.version(kind)
            bundle = transport.get_bundle(kind, have)
            if have and bundle.version == have and not bundle.payload:
                continue
            try:
                self.accept(kind, bundle)
            except BundleError as exc:
                self.counters.inc("bundles.refused")
                self.refusals[kind] = str(exc)
                log.error("refused the %s bundle %s: %s", kind, bundle.version[:12], exc)
                continue
            self.refusals.pop(kind, None)
            updated.append(kind)
        return updated

    def accept(self, kind: str, bundle: SignedBundle) -> Path:
        """Verify, unpack and apply one bundle; BundleError leaves the last good one in place."""
        if bundle.kind != kind:
            raise BundleError(f"asked for the {kind} bundle, got a {bundle.kind!r} one")
        files = self.verify(bundle, self.public_key)
        root = self.dir / kind
        root.mkdir(parents=True, exist_ok=True)
        final = root / bundle.version
        staging = Path(tempfile.mkdtemp(dir=root, prefix=".new-"))
        try:
            for name, data in files.items():
                target = staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            if self.apply is not None:
                try:
                    self.apply(kind, staging / kind if (staging / kind).is_dir() else staging)
                except AgentError as exc:
                    raise BundleError(f"the {kind} bundle is signed but invalid: {exc}") from exc
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._set_current(root, bundle.version)
        self.counters.inc("bundles.applied")
        log.info("applied the %s bundle %s", kind, bundle.version[:12])
        return final

    def _set_current(self, root: Path, version: str) -> None:
        old = self.version(root.name)
        tmp = root / ".current.tmp"
        tmp.write_text(version + "\n")
        os.replace(tmp, root / "current")
        if old and old != version:
            shutil.rmtree(root / old, ignore_errors=True)

    def content_dir(self, kind: str) -> Path | None:
        """Where the last good bundle's YAML files are (the bundle's ``<kind>/`` folder)."""
        cur = self.current(kind)
        if cur is None:
            return None
        return cur / kind if (cur / kind).is_dir() else cur

    def reapply(self) -> None:
        """On start: use the last good bundles again (a broken one is skipped, counted)."""
        for kind in self.kinds:
            directory = self.content_dir(kind)
            if directory is None or self.apply is None:
                continue
            try:
                self.apply(kind, directory)
            except AgentError as exc:
                self.counters.inc("bundles.refused")
                self.refusals[kind] = str(exc)

    def problems(self) -> list[str]:
        return [f"{kind} bundle refused: {why}" for kind, why in sorted(self.refusals.items())]


def poll_safely(client: BundleClient, transport: Transport) -> list[str]:
    """One poll from the uploader's thread: a transient failure waits for the next interval."""
    try:
        return client.poll(transport)
    except CollectorError as exc:
        client.counters.inc("bundles.poll_failed")
        log.warning("cannot fetch bundles: %s", exc)
        return []


def catalog_applier(set_matcher: Callable[[Any], None], extra_dirs: list[Path]) -> Apply:
    """Apply a catalog bundle: it replaces the built-in catalog (extra dirs still merge).

    The new catalog is loaded (and so validated) before it is swapped in.
    """

    def apply(kind: str, directory: Path) -> None:
        if kind != "catalog":
            return
        from signatures.exceptions import SignatureError  # noqa: PLC0415
        from signatures.loader import load_catalog  # noqa: PLC0415
        from signatures.matcher import Matcher  # noqa: PLC0415

        try:
            catalog = load_catalog([directory, *extra_dirs], builtin=False)
        except SignatureError as exc:
            raise BundleError(str(exc)) from exc
        set_matcher(Matcher(catalog.services))

    return apply


def prices_applier(set_prices: Callable[[Mapping[str, Any]], None]) -> Apply:
    """Apply a policy bundle's ``prices:`` (the organisation's negotiated prices, see
    ``agent.metering.cost.overrides_from_policy``): validated first, so a bad one is refused
    and the last good prices stay. The rest of a policy is for the collector's policy engine.
    """

    def apply(kind: str, directory: Path) -> None:
        if kind != "policy":
            return
        from agent.metering.cost import overrides_from_policy  # noqa: PLC0415
        from agent.metering.exceptions import PricingError  # noqa: PLC0415

        try:
            overrides = overrides_from_policy(directory)
        except PricingError as exc:
            raise BundleError(str(exc)) from exc
        set_prices(overrides)

    return apply


def all_of(*appliers: Apply) -> Apply:
    """One Apply that runs each in turn (each looks at the kinds it knows)."""

    def apply(kind: str, directory: Path) -> None:
        for a in appliers:
            a(kind, directory)

    return apply
