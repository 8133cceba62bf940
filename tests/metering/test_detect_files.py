"""Uploads: kinds from magic bytes, extension classes instead of names, counts and sizes."""

from __future__ import annotations

import io
import random
import zipfile

import pytest

from agent.counters import Counters
from agent.metering.detect import Detectors, UploadStat, labels
from agent.metering.detect.files import FileTyper, ext_class, sniff
from agent.metering.detect.multipart import MultipartSplitter, PartStart, boundary_of

DETECTORS = Detectors()
BOUNDARY = "xYzZY"


def office(entries: dict[str, bytes], *, content_types_last: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        names = list(entries)
        if not content_types_last:
            z.writestr("[Content_Types].xml", b"<Types/>")
        for name in names:
            z.writestr(name, entries[name])
        if content_types_last:
            z.writestr("[Content_Types].xml", b"<Types/>")
    return buf.getvalue()


# Enough incompressible-ish filler that the distinguishing entry names sit past the 4 KiB head.
FILLER = random.Random(1).randbytes(20_000)
DOCX = office({"_rels/.rels": b"<r/>", "docProps/x.bin": FILLER, "word/document.xml": b"<w/>"})
XLSX = office({"xl/workbook.xml": b"<x/>"}, content_types_last=True)
PPTX = office({"ppt/presentation.xml": b"<p/>"})


def plain_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("notes.txt", "hello")
    return buf.getvalue()


PLAIN_ZIP = plain_zip()


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"%PDF-1.7\n...", "pdf"),
        (DOCX, "docx"),
        (XLSX, "xlsx"),
        (PPTX, "pptx"),
        (PLAIN_ZIP, "zip"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(100), "ole"),
        (b"\x89PNG\r\n\x1a\n" + bytes(50), "png"),
        (b"\xff\xd8\xff\xe0" + bytes(50), "jpeg"),
        (b"GIF89a" + bytes(50), "gif"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "webp"),
        (b"RIFF\x10\x00\x00\x00WAVEfmt ", "wav"),
        (b"ID3\x04\x00" + bytes(50), "mp3"),
        (b"\x00\x00\x00\x18ftypmp42" + bytes(20), "mp4"),
        (b"\x00\x00\x00\x18ftypheic" + bytes(20), "heic"),
        (b'  {"a": [1, 2]}', "json"),
        (b"[1, 2, 3]", "json"),
        (b"name,email,amount\nann,a@x.io,3\nbob,b@x.io,4\n", "csv"),
        (b"a;b\n1;2\n3;4", "csv"),
        ("Grüße, dear team.\nThe plan is ready.\n".encode(), "text"),
        (b"\xef\xbb\xbfwith a BOM\n", "text"),
        (bytes(range(256)), "binary"),
        (b"\xc3\x28 invalid utf-8", "binary"),
        (b"", "empty"),
    ],
)
def test_sniffed_kinds(data: bytes, kind: str) -> None:
    typer = FileTyper()
    for i in range(0, len(data), 1000):  # the office markers may be found in any chunk
        typer.feed(data[i : i + 1000])
    assert typer.kind(complete=True) == kind


def test_a_multibyte_character_cut_by_the_head_is_still_text() -> None:
    head = ("x" * 4095 + "ü").encode()[:4096]
    assert sniff(head, complete=False) == "text"
    assert sniff(head, complete=True) == "binary"  # a file that really ends mid-character


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("Q3 layoffs.XLSX", "spreadsheet"),
        ("C:\\Users\\ann\\contract final.docx", "document"),
        ("/home/ann/photo.jpeg", "image"),
        ("main.py", "code"),
        ("dump.sql", "code"),
        ("data.json", "data"),
        ("notes.md", "text"),
        ("backup.tar.gz", "archive"),
        ("talk.m4a", "audio"),
        ("clip.mov", "video"),
        ("deck.pptx", "presentation"),
        ("secret-project-apollo.weird", "other"),
        ("Makefile", "none"),
        (".bashrc", "none"),
        (None, "none"),
    ],
)
def test_extension_classes(name: str | None, cls: str) -> None:
    assert ext_class(name) == cls


def multipart(parts: list[tuple[str, str | None, str | None, bytes]]) -> bytes:
    out = b""
    for name, filename, ctype, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disp}\r\n".encode()
        out += (f"Content-Type: {ctype}\r\n" if ctype else "").encode() + b"\r\n" + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def test_multipart_uploads_are_counted_by_kind_and_class_never_by_name() -> None:
    body = multipart(
        [
            ("purpose", None, None, b"assistants"),
            (
                "file",
                "Project Apollo - acquisition of Initech.docx",
                "application/octet-stream",
                DOCX,
            ),
            ("file", "budget.xlsx", None, XLSX),
            ("file", "budget2.xlsx", None, XLSX),
            ("file", "card.png", "image/png", b"\x89PNG\r\n\x1a\n" + b"4111 1111 1111 1111"),
            ("file", "people.csv", "text/csv", b"name,mail\nann,ann@example.com\n"),
            ("file", "empty.txt", "text/plain", b""),
        ]
    )
    result = DETECTORS.scan(body, f"multipart/form-data; boundary={BOUNDARY}")
    assert result.uploads == (
        UploadStat("csv", "spreadsheet", 1, 30),
        UploadStat("docx", "document", 1, len(DOCX)),
        UploadStat("empty", "text", 1, 0),
        UploadStat("png", "image", 1, 27),
        UploadStat("xlsx", "spreadsheet", 2, 2 * len(XLSX)),
    )
    # The CSV is text and is scanned; the PNG's bytes are not text and are not.
    assert result.as_dict() == {labels.EMAIL: 1}
    assert "Apollo" not in repr(result)
    assert "budget" not in repr(result)


def test_filename_star_and_quoted_names() -> None:
    head = (
        b"Content-Disposition: form-data; name=\"f\"; filename*=UTF-8''Gr%C3%BC%C3%9Fe.PDF\r\n"
        b"Content-Type: application/pdf"
    )
    from agent.metering.detect.multipart import _part_start

    assert _part_start(head) == PartStart("document", "application/pdf")
    quoted = b'Content-Disposition: form-data; name="f"; filename="a \\"b\\"; c.csv"'
    assert _part_start(quoted) == PartStart("spreadsheet", "")
    assert _part_start(b'Content-Disposition: form-data; name="text"') == PartStart(None, "")


@pytest.mark.parametrize(
    ("content_type", "body", "uploads", "found"),
    [
        ("application/pdf", b"%PDF-1.4 a@b.co", [("pdf", 1)], {}),
        ("application/octet-stream", b"plain words a@b.co", [("text", 1)], {labels.EMAIL: 1}),
        (None, b"\x89PNG\r\n\x1a\n....", [("png", 1)], {}),
        (None, b'{"messages": "a\\u0040b.co"}', [], {labels.EMAIL: 1}),
        (None, b"", [], {}),
        ("application/octet-stream", b"", [], {}),
        ("text/plain", b"a@b.co", [], {labels.EMAIL: 1}),
        ("audio/wav", b"RIFF\x00\x00\x00\x00WAVEfmt ", [("wav", 1)], {}),
    ],
)
def test_raw_bodies(
    content_type: str | None, body: bytes, uploads: list[tuple[str, int]], found: dict[str, int]
) -> None:
    result = DETECTORS.scan(body, content_type)
    assert [(u.kind, u.count) for u in result.uploads] == uploads
    assert all(u.ext_class == "none" and u.total_bytes == len(body) for u in result.uploads)
    assert result.as_dict() == found


def test_boundary_parameter() -> None:
    assert boundary_of('multipart/form-data; charset=utf-8; boundary="a b:c"') == "a b:c"
    assert boundary_of("multipart/form-data; BOUNDARY=----x123") == "----x123"
    assert boundary_of("multipart/form-data") is None


def test_malformed_multipart_is_counted_and_still_scanned() -> None:
    counters = Counters()
    detectors = Detectors(counters=counters)
    # The boundary in the header is not the one in the body.
    body = multipart([("q", None, None, b"mail a@b.co")])
    result = detectors.scan(body, "multipart/form-data; boundary=other")
    assert result.as_dict() == {labels.EMAIL: 1}
    assert counters.get("metering.detect.multipart_malformed") == 1
    # No boundary parameter at all.
    result = detectors.scan(b"mail c@d.co", "multipart/form-data")
    assert result.as_dict() == {labels.EMAIL: 1}
    assert counters.get("metering.detect.multipart_malformed") == 2
    # Headers that never end.
    result = detectors.scan(
        f"--{BOUNDARY}\r\nX: ".encode() + b"y" * 20_000 + b" e@f.co",
        f"multipart/form-data; boundary={BOUNDARY}",
    )
    assert result.as_dict() == {labels.EMAIL: 1}
    assert counters.get("metering.detect.multipart_malformed") == 3


def test_truncated_multipart_closes_the_open_part() -> None:
    body = multipart([("f", "a.csv", "text/csv", b"x,y\n1,a@b.co\n")])
    cut = body[: body.index(b"\r\n--xYzZY--")]
    splitter = MultipartSplitter(BOUNDARY)
    events = splitter.feed(cut) + splitter.finish()
    assert splitter.malformed
    assert b"".join(e for e in events if isinstance(e, bytes)) == b"x,y\n1,a@b.co\n"
    result = DETECTORS.scan(cut, f"multipart/form-data; boundary={BOUNDARY}")
    assert result.as_dict() == {labels.EMAIL: 1}
    assert [(u.kind, u.count) for u in result.uploads] == [("csv", 1)]
