"""Data-class detectors: what sensitive kinds of data an AI-bound body carries, never the data.

The metering proxy hands each request body to a `Scanner` in chunks and gets back `Labels`:
label names with counts (``pii.email: 2``, ``secret.aws_access_key_id: 1``), the highest data
class they imply, and what files were uploaded (sniffed kind, extension class, count, bytes).
Matched text never leaves a detector, not even as a hash. Standard library only, because this
runs on every workstation.

Usage::

    detectors = Detectors(org_rules, max_scan_bytes=4 << 20, counters=counters)  # per policy
    scanner = detectors.scanner(flow.request.headers.get("content-type"))      # per body
    for chunk in chunks:
        scanner.feed(chunk)
    labels = scanner.finish()

Modules: `labels` (the label-to-class table), `records`, `scanner` (content types and uploads),
`engine` (the streaming window), `text` (UTF-8, JSON escapes, form decoding), `numbers`,
`phones`, `checksums`, `emails`, `secrets`, `markings`, `org`, `tokens`, `files`, `multipart`.
"""

from agent.metering.detect.labels import LABEL_CLASS
from agent.metering.detect.records import (
    DATA_CLASSES,
    DataClass,
    ExtClass,
    FileKind,
    Labels,
    OrgKeyword,
    OrgPattern,
    OrgRule,
    UploadStat,
)
from agent.metering.detect.scanner import DEFAULT_MAX_SCAN_BYTES, Detectors, Scanner

__all__ = [
    "DATA_CLASSES",
    "DEFAULT_MAX_SCAN_BYTES",
    "LABEL_CLASS",
    "DataClass",
    "Detectors",
    "ExtClass",
    "FileKind",
    "Labels",
    "OrgKeyword",
    "OrgPattern",
    "OrgRule",
    "Scanner",
    "UploadStat",
]
