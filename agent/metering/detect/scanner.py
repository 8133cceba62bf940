"""`Detectors` (built once per policy) and `Scanner` (one per request body): bytes in, `Labels` out.

A body is read according to its content type:

==================================  =======================================================
content type                        what happens
==================================  =======================================================
``multipart/form-data``             split into parts; form fields are scanned as text (JSON
                                    when the part says so); parts with a ``filename`` are
                                    uploads: sniffed, sized, and scanned when textual
``application/x-www-form-urlencoded``  ``+`` and ``%XX`` decoded, then scanned
``*json*`` (incl. ``+json``,        JSON string escapes undone (two levels), then scanned
NDJSON)
``text/*``                          scanned as UTF-8
missing                             sniffed: text kinds are scanned, binary kinds are an upload
anything else (``application/pdf``, one upload of the sniffed kind (extension class ``none``),
``image/*``, octet-stream, ...)     scanned too when its bytes turn out to be text
==================================  =======================================================

Only the first ``max_scan_bytes`` of a body's text-bound bytes are read for labels; the rest is
still split, sniffed and sized, the result says ``truncated``, and the ``Counters`` passed in
count ``metering.detect.truncated``. Zip-based and binary uploads (docx, xlsx, pdf, images) are
not decompressed or parsed, so text inside them is not seen.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from agent.counters import Counters
from agent.exceptions import ConfigError
from agent.metering.detect.emails import EmailDetector
from agent.metering.detect.engine import Detector, TextWindow
from agent.metering.detect.files import HEAD_BYTES, FileTyper, is_textual
from agent.metering.detect.labels import LABEL_CLASS, highest
from agent.metering.detect.markings import MarkingDetector
from agent.metering.detect.multipart import (
    MultipartSplitter,
    PartEnd,
    PartStart,
    Unparsed,
    boundary_of,
)
from agent.metering.detect.numbers import NumberDetector
from agent.metering.detect.org import org_detectors
from agent.metering.detect.records import DataClass, ExtClass, FileKind, Labels, OrgRule, UploadStat
from agent.metering.detect.secrets import secret_detectors
from agent.metering.detect.text import TextDecoder, TextMode

DEFAULT_MAX_SCAN_BYTES = 4 * 1024 * 1024


class Detectors:
    """The compiled detector set of one policy; makes a `Scanner` per body.

    Raises `agent.exceptions.ConfigError` when an organisation rule (see `org`) or an option is
    bad. ``max_scan_bytes`` 0 reads no text at all (uploads are still sized and sniffed).
    ``window_chars`` is how much text is batched between scans (memory against per-batch
    overhead); tests lower it to force many chunk boundaries.
    """

    def __init__(
        self,
        org_rules: Iterable[OrgRule] = (),
        *,
        max_scan_bytes: int = DEFAULT_MAX_SCAN_BYTES,
        counters: Counters | None = None,
        window_chars: int = 64 * 1024,
    ) -> None:
        if max_scan_bytes < 0:
            raise ConfigError(f"max_scan_bytes: {max_scan_bytes} is negative")
        if window_chars < 1:
            raise ConfigError(f"window_chars: {window_chars} is not a positive number")
        org, org_classes = org_detectors(org_rules)
        self.detectors: tuple[Detector, ...] = (
            NumberDetector(),
            EmailDetector(),
            MarkingDetector(),
            *secret_detectors(),
            *org,
        )
        self.classes: dict[str, DataClass] = {**LABEL_CLASS, **org_classes}
        self.max_scan_bytes = max_scan_bytes
        self.counters = counters if counters is not None else Counters()
        self.window_chars = window_chars

    def scanner(self, content_type: str | None = None) -> Scanner:
        return Scanner(self, content_type)

    def scan(self, body: bytes, content_type: str | None = None) -> Labels:
        """Scan a whole body at once."""
        scanner = self.scanner(content_type)
        scanner.feed(body)
        return scanner.finish()


def _media_type(content_type: str | None) -> str:
    return (content_type or "").partition(";")[0].strip().lower()


def _text_mode(media_type: str) -> TextMode | None:
    """How a declared media type is read as text; ``None`` when it is not text."""
    if media_type == "application/x-www-form-urlencoded":
        return "form"
    if "json" in media_type:
        return "json"
    if media_type.startswith("text/"):
        return "plain"
    return None


class _Blob:
    """A file (upload part or binary body): sized and sniffed; its text scanned if it is text.

    A multipart file part is always an upload, even an empty one (someone attached it). A raw
    body is one when it is not empty and is declared non-text or sniffs as binary.
    """

    __slots__ = ("declared", "decoder", "ext", "held", "is_part", "typer")

    def __init__(self, ext: ExtClass, *, is_part: bool, declared: bool) -> None:
        self.ext = ext
        self.is_part = is_part
        self.declared = declared
        self.typer = FileTyper()
        self.held: list[bytes] | None = []  # the head, until its kind is known
        self.decoder: TextDecoder | None = None


class Scanner:
    """Scans one request body in memory: `feed` chunks, then `finish` once."""

    __slots__ = (
        "_blob",
        "_budget",
        "_detectors",
        "_done",
        "_loose",
        "_splitter",
        "_text",
        "_truncated",
        "_uploads",
        "_window",
    )

    def __init__(self, detectors: Detectors, content_type: str | None = None) -> None:
        self._detectors = detectors
        self._window = TextWindow(detectors.detectors, detectors.window_chars)
        self._budget = detectors.max_scan_bytes
        self._truncated = False
        self._done = False
        self._uploads: dict[tuple[FileKind, ExtClass], list[int]] = {}
        self._splitter: MultipartSplitter | None = None
        self._text: TextDecoder | None = None  # the body's or the current part's text path
        self._blob: _Blob | None = None  # the body's or the current part's file
        self._loose: TextDecoder | None = None  # bytes outside a broken multipart structure
        media = _media_type(content_type)
        mode = _text_mode(media)
        boundary = boundary_of(content_type or "") if media.startswith("multipart/") else None
        if boundary is not None:
            self._splitter = MultipartSplitter(boundary)
        elif media.startswith("multipart/"):
            # No boundary to split on: read it as text rather than not at all.
            detectors.counters.inc("metering.detect.multipart_malformed")
            self._text = TextDecoder("plain")
        elif mode is not None:
            self._text = TextDecoder(mode)
        else:
            self._blob = _Blob("none", is_part=False, declared=bool(media))

    def __repr__(self) -> str:
        return f"<Scanner truncated={self._truncated} done={self._done}>"

    def feed(self, chunk: bytes) -> None:
        if self._done:
            raise RuntimeError("Scanner.feed() after finish()")
        if self._splitter is not None:
            self._on_events(self._splitter.feed(chunk))
        elif self._blob is not None:
            self._blob_data(self._blob, chunk)
        else:
            self._scan_bytes(chunk)

    def finish(self) -> Labels:
        if self._done:
            raise RuntimeError("Scanner.finish() called twice")
        self._done = True
        if self._splitter is not None:
            self._on_events(self._splitter.finish())
            if self._splitter.malformed:
                self._detectors.counters.inc("metering.detect.multipart_malformed")
        self._end_text()
        if self._blob is not None:
            self._end_blob(self._blob)
        found = self._window.finish()
        if self._truncated:
            self._detectors.counters.inc("metering.detect.truncated")
        return self._labels(found)

    # -- text --------------------------------------------------------------------------------

    def _scan_bytes(self, data: bytes) -> None:
        if self._text is None:
            self._text = TextDecoder("plain")
        if len(data) > self._budget:
            data = data[: self._budget]
            self._truncated = True
        self._budget -= len(data)
        if data:
            self._window.feed(self._text.feed(data))

    def _end_text(self) -> None:
        if self._text is not None:
            # A newline keeps the end of one part from joining the start of the next.
            self._window.feed(self._text.flush() + "\n")
            self._text = None

    # -- multipart -----------------------------------------------------------------------------

    def _on_events(self, events: list[bytes | PartStart | PartEnd | Unparsed]) -> None:
        for event in events:
            if isinstance(event, bytes):
                if self._blob is not None:
                    self._blob_data(self._blob, event)
                else:
                    self._scan_bytes(event)
            elif isinstance(event, PartStart):
                self._end_text()
                if event.ext_class is not None:
                    self._blob = _Blob(event.ext_class, is_part=True, declared=True)
                else:
                    self._text = TextDecoder(_text_mode(event.media_type) or "plain")
            elif isinstance(event, PartEnd):
                if self._blob is not None:
                    self._end_blob(self._blob)
                    self._blob = None
                self._end_text()
            else:
                # One text path for all of them, so where the body was split does not matter.
                if self._loose is None or self._text is not self._loose:
                    self._end_text()
                    self._loose = self._text = TextDecoder("plain")
                self._scan_bytes(event.data)

    # -- files ---------------------------------------------------------------------------------

    def _blob_data(self, blob: _Blob, data: bytes) -> None:
        blob.typer.feed(data)
        if blob.held is None:
            if blob.decoder is not None:
                self._text = blob.decoder
                self._scan_bytes(data)
            return
        blob.held.append(data)
        if len(blob.typer.head) >= HEAD_BYTES:
            self._decide_blob(blob, complete=False)

    def _decide_blob(self, blob: _Blob, *, complete: bool) -> None:
        """The head is known: scan the held bytes as text if the kind is textual."""
        held, blob.held = blob.held or [], None
        kind = blob.typer.kind(complete=complete)
        if is_textual(kind):
            blob.decoder = TextDecoder("json" if kind == "json" else "plain")
            self._text = blob.decoder
            for data in held:
                self._scan_bytes(data)

    def _end_blob(self, blob: _Blob) -> None:
        if blob.held is not None:
            self._decide_blob(blob, complete=True)
        self._end_text()
        kind = blob.typer.kind(complete=True)
        if blob.is_part or (blob.typer.size and (blob.declared or not is_textual(kind))):
            entry = self._uploads.setdefault((kind, blob.ext), [0, 0])
            entry[0] += 1
            entry[1] += blob.typer.size

    # -- result --------------------------------------------------------------------------------

    def _labels(self, found: Counter[str]) -> Labels:
        classes = self._detectors.classes
        counts = tuple(sorted((label, n) for label, n in found.items() if n))
        uploads = tuple(
            UploadStat(kind, ext, count, size)
            for (kind, ext), (count, size) in sorted(self._uploads.items())
        )
        return Labels(
            counts=counts,
            data_class=highest(classes[label] for label, _ in counts),
            uploads=uploads,
            truncated=self._truncated,
        )
