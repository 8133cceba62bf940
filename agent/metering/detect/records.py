"""Typed records of the detectors: the `Labels` a scan yields and the organisation rules it takes.

Nothing here can hold matched text: a label is a fixed name, a count is an int, an upload is
described by a sniffed kind, an extension class from a closed vocabulary and a byte count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DataClass = Literal["public", "internal", "confidential", "restricted"]

# Lowest to highest; a body's class is the highest any of its labels implies.
DATA_CLASSES: tuple[DataClass, ...] = ("public", "internal", "confidential", "restricted")

FileKind = Literal[
    "pdf",
    "docx",
    "xlsx",
    "pptx",
    "zip",
    "ole",  # legacy Office (doc, xls, ppt) and other OLE2 compound files
    "png",
    "jpeg",
    "gif",
    "webp",
    "heic",  # HEIF/AVIF still images (ISO media with an image brand)
    "wav",
    "mp3",
    "mp4",  # ISO base media: mp4, m4a, mov
    "json",
    "csv",
    "text",
    "binary",
    "empty",
]

# The class of a file name's extension. The name itself can be content ("Q3 layoffs.xlsx"),
# and so can an unusual extension, so only this closed vocabulary is ever recorded.
ExtClass = Literal[
    "document",
    "spreadsheet",
    "presentation",
    "image",
    "audio",
    "video",
    "archive",
    "code",
    "data",
    "text",
    "other",
    "none",
]


@dataclass(frozen=True, slots=True)
class UploadStat:
    """Files of one sniffed kind and extension class in one body: how many, how many bytes."""

    kind: FileKind
    ext_class: ExtClass
    count: int
    total_bytes: int


@dataclass(frozen=True, slots=True)
class Labels:
    """What one body was found to contain: label counts and the data class they imply.

    ``counts`` is sorted by label and holds only labels seen at least once. ``truncated`` is true
    when the body was longer than the scan limit and its tail was not inspected for labels (file
    kinds and sizes still cover the whole body).
    """

    counts: tuple[tuple[str, int], ...]
    data_class: DataClass
    uploads: tuple[UploadStat, ...] = ()
    truncated: bool = False

    def get(self, label: str) -> int:
        """The count of one label, 0 when it was not seen."""
        for name, n in self.counts:
            if name == label:
                return n
        return 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.counts)


@dataclass(frozen=True, slots=True)
class OrgKeyword:
    """Words an organisation flags (project code names, client names), matched as whole words.

    ``label`` must start with ``org.``; matching ignores case unless ``case_sensitive``.
    """

    label: str
    data_class: DataClass
    words: tuple[str, ...]
    case_sensitive: bool = False


@dataclass(frozen=True, slots=True)
class OrgPattern:
    """A regular expression an organisation flags (e.g. its own customer-id format).

    ``label`` must start with ``org.``. Matches longer than ``max_len`` characters are ignored,
    which keeps the streaming overlap (and so memory) bounded.
    """

    label: str
    data_class: DataClass
    regex: str
    max_len: int = 256


OrgRule = OrgKeyword | OrgPattern
