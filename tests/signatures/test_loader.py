"""The catalog loader rejects bad entries naming file, line, entry and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from signatures.exceptions import CatalogError
from signatures.loader import load_catalog, load_file, load_shared_infra

GOOD = """
vendor: Acme AI
id: acme
hq_country: US
services:
  - id: acme-chat
    name: Acme Chat
    category: assistant
    hosts:
      - acme-ai.example
      - exact: chat.acme.example
      - regex: 'api\\.[a-z0-9-]+\\.acme-cloud\\.example'
      - domain: app.acme.example
        tier: enterprise
        pinned: true
    processes: [AcmeChat, AcmeChat.exe]
    risk:
      trains_on_user_data:
        - {value: true, tier: consumer, source: 'https://acme.example/privacy'}
      hq_country: {value: US, source: 'https://acme.example/about'}
"""


def write(tmp_path: Path, text: str, name: str = "acme.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_good_file_loads_into_typed_records(tmp_path: Path) -> None:
    (svc,) = load_file(write(tmp_path, GOOD))
    assert svc.id == "acme-chat"
    assert svc.vendor == "Acme AI"
    assert [h.kind for h in svc.hosts] == ["domain", "exact", "regex", "domain"]
    assert svc.hosts[3].tier == "enterprise"
    assert svc.hosts[3].pinned is True
    assert svc.processes == ("AcmeChat", "AcmeChat.exe")
    assert {(f.attribute, f.value) for f in svc.risk} == {
        ("trains_on_user_data", True),
        ("hq_country", "US"),
    }


@pytest.mark.parametrize(
    ("old", "new", "field", "line"),
    [
        ("category: assistant", "category: chatbot", "'category'", 6),
        ("      - acme-ai.example", "      - notahost_", "'hosts[0].domain'", 6),
        ("      - acme-ai.example", "      - cloudfront.net", "shared infrastructure", 6),
        ("      - acme-ai.example", "      - amazonaws.com", "shared infrastructure", 6),
        (
            "      - acme-ai.example",
            "      - {domain: a.example, exact: b.example}",
            "'hosts[0]'",
            10,
        ),
        ("        pinned: true", "        pinned: yes please", "'hosts[3].pinned'", 13),
        ("        tier: enterprise", "        tier: premium", "'hosts[3].tier'", 13),
        ("'https://acme.example/privacy'", "'acme.example/privacy'", "source", 19),
        ("{value: true, tier: consumer", "{value: 'maybe', tier: consumer", "value", 19),
        ("hq_country: {value: US", "hq_country: {value: USA", "alpha-2", 20),
        ("    processes: [AcmeChat", "    procs: [AcmeChat", "'procs'", 6),
        ("      - regex: 'api", "      - regex: '(api", "invalid regex", 12),
    ],
)
def test_bad_entries_name_file_entry_and_field(
    tmp_path: Path, old: str, new: str, field: str, line: int
) -> None:
    text = textwrap.dedent(GOOD)
    assert old in text
    path = write(tmp_path, text.replace(old, new))
    with pytest.raises(CatalogError) as err:
        load_file(path, load_shared_infra())
    msg = str(err.value)
    assert str(path) in msg
    assert "service 'acme-chat'" in msg
    assert field in msg
    assert f"{path}:{line}:" in msg


def test_vendor_id_must_match_file_name(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD, name="other.yaml")
    with pytest.raises(CatalogError, match="file name stem 'other'"):
        load_file(path)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "vendor: [unclosed\nid: x\n")
    with pytest.raises(CatalogError, match=rf"{path.name}:\d+: not valid YAML"):
        load_file(path)


def test_duplicate_service_id_across_dirs(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    write(a, GOOD)
    write(b, GOOD)
    with pytest.raises(CatalogError, match="duplicate"):
        load_catalog([a, b], builtin=False)


def test_missing_extra_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist"):
        load_catalog([tmp_path / "nope"], builtin=False)
