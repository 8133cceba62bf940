"""Upload file types: kinds sniffed from magic bytes, and the class of a file name's extension.

The kind comes from the bytes, not the name or the declared content type, both of which lie. Only
the first 4 KiB are kept to decide it, plus four ``bytes.find`` calls per chunk for the entry
names that tell an Office file from any other zip (``[Content_Types].xml`` with ``word/``,
``xl/`` or ``ppt/``), which may sit anywhere in the archive (the central directory is at its end).

A file name is never kept: it can be content ("Q3 layoffs.xlsx"). `ext_class` maps its
extension to a closed vocabulary and the caller drops the name.
"""

from __future__ import annotations

import codecs
import re

from agent.metering.detect.records import ExtClass, FileKind

HEAD_BYTES = 4096

_EXT_GROUPS: tuple[tuple[ExtClass, str], ...] = (
    ("document", "pdf doc docx docm odt rtf pages epub"),
    ("spreadsheet", "xls xlsx xlsm xlsb ods csv tsv numbers"),
    ("presentation", "ppt pptx pptm odp key"),
    ("image", "png jpg jpeg gif webp bmp tif tiff heic heif avif svg ico"),
    ("audio", "mp3 wav m4a ogg oga opus flac aac aiff wma"),
    ("video", "mp4 mov avi mkv webm mpeg mpg m4v wmv"),
    ("archive", "zip tar gz tgz bz2 xz 7z rar zst"),
    (
        "code",
        "py ipynb js mjs ts tsx jsx java kt kts scala c h cc cpp hpp cs go rs rb php swift m "
        "sh bash zsh ps1 sql r lua pl dart vue svelte",
    ),
    ("data", "json jsonl ndjson xml yaml yml toml parquet avro proto ini cfg conf env"),
    ("text", "txt md markdown rst log tex html htm"),
)
_EXT_CLASSES: dict[str, ExtClass] = {ext: cls for cls, exts in _EXT_GROUPS for ext in exts.split()}

_ZIP_MARKERS = (b"[Content_Types].xml", b"word/", b"xl/", b"ppt/")
_MARKER_TAIL = max(len(m) for m in _ZIP_MARKERS) - 1
_OFFICE: tuple[tuple[bytes, FileKind], ...] = (
    (b"word/", "docx"),
    (b"xl/", "xlsx"),
    (b"ppt/", "pptx"),
)
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif"})
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")
_TEXTUAL: frozenset[FileKind] = frozenset({"json", "csv", "text"})


def ext_class(filename: str | None) -> ExtClass:
    """The class of ``filename``'s extension: ``none`` without a name or extension."""
    if filename is None:
        return "none"
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, ext = base.rpartition(".")
    if not dot or not stem:
        return "none"
    return _EXT_CLASSES.get(ext.lower(), "other")


def is_textual(kind: FileKind) -> bool:
    """Kinds whose bytes the text detectors read (compressed containers they cannot)."""
    return kind in _TEXTUAL


def sniff(head: bytes, *, complete: bool) -> FileKind:
    """The kind of a file from its first bytes; ``complete`` when ``head`` is the whole file."""
    if not head:
        return "empty"
    if head.startswith(b"%PDF-"):
        return "pdf"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
        return "zip"
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return "ole"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] in (b"WEBP", b"WAVE"):
        return "webp" if head[8:12] == b"WEBP" else "wav"
    if head[4:8] == b"ftyp":
        return "heic" if head[8:12] in _HEIF_BRANDS else "mp4"
    if head.startswith(b"ID3") or head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return "mp3"
    return _text_kind(head, complete=complete)


def _text_kind(head: bytes, *, complete: bool) -> FileKind:
    body = head.removeprefix(codecs.BOM_UTF8)
    if b"\x00" in body:
        return "binary"
    try:
        # Incremental, so a character cut at the end of the head is not an error.
        text = codecs.getincrementaldecoder("utf-8")().decode(body, final=complete)
    except UnicodeDecodeError:
        return "binary"
    if len(_CONTROL.findall(text)) * 100 > len(text):
        return "binary"
    if text.lstrip()[:1] in ("{", "["):
        return "json"
    return "csv" if _looks_csv(text, complete=complete) else "text"


def _looks_csv(text: str, *, complete: bool) -> bool:
    lines = text.split("\n")
    if not complete:
        lines = lines[:-1]  # the last one may be cut
    rows = [line.rstrip("\r") for line in lines if line.strip()][:20]
    if len(rows) < 2:
        return False
    for delim in (",", ";", "\t", "|"):
        counts = {row.count(delim) for row in rows}
        if len(counts) == 1 and counts.pop() >= 1:
            return True
    return False


class FileTyper:
    """Sniffs one streamed file: keeps its head and looks for Office entry names in a zip."""

    __slots__ = ("_found", "_head", "_tail", "size")

    def __init__(self) -> None:
        self._head = b""
        self._tail = b""
        self._found: set[bytes] = set()
        self.size = 0

    @property
    def head(self) -> bytes:
        return self._head

    def feed(self, data: bytes) -> None:
        self.size += len(data)
        if len(self._head) < HEAD_BYTES:
            self._head += data[: HEAD_BYTES - len(self._head)]
        if self._head[:2] == b"PK" and len(self._found) < len(_ZIP_MARKERS):
            window = self._tail + data
            self._found.update(m for m in _ZIP_MARKERS if m not in self._found and m in window)
            self._tail = window[-_MARKER_TAIL:]

    def kind(self, *, complete: bool) -> FileKind:
        kind = sniff(self._head, complete=complete and self.size == len(self._head))
        if kind == "zip" and _ZIP_MARKERS[0] in self._found:
            for marker, office in _OFFICE:
                if marker in self._found:
                    return office
        return kind
