"""Hostname normalisation shared by the loader, the matcher and the decoders."""

from __future__ import annotations

import idna

from signatures.exceptions import SignatureError


def normalise_name(name: str) -> str:
    """Lower-case, strip one trailing dot, convert U-labels to A-labels (IDNA 2008, UTS 46).

    ASCII names (nearly all of them on the wire) skip the IDNA codec, which is slow.
    """
    if name.endswith("."):
        name = name[:-1]
    if name.isascii():
        return name.lower()
    try:
        return idna.encode(name, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise SignatureError(f"not a valid internationalised name: {exc}") from exc
