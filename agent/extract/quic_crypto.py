"""QUIC Initial packet protection: per-version salts and labels, client Initial keys, unprotection.

Initial packets are encrypted with keys anyone can derive from the client's first Destination
Connection ID (RFC 9001 section 5.2), so a passive observer can read the ClientHello they carry.
Only the client direction is ever decrypted here: the server's Initials hold nothing we need.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.ciphers.modes import ECB

from agent.exceptions import DecodeError, TruncatedError

_SALT_V1 = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")  # RFC 9001
_SALT_V2 = bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9")  # RFC 9369
_SALT_D29 = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")  # drafts 29-34
_SALT_D23 = bytes.fromhex("c3eef712c72ebb5a11a7d2432bb46365bef9f502")  # drafts 23-28
_SALT_D22 = bytes.fromhex("7fbcdb0e7c66bbe9193a96cd21519ebd7a02644a")  # draft 22
# Google QUIC versions that adopted Initial protection; the salts are Chromium's, as Wireshark
# and nDPI have them.
_SALT_Q050 = bytes.fromhex("504574efd066fe2f9d945cfcdbd3a7f0d3b56b45")
_SALT_T050 = bytes.fromhex("7ff579e5acd072915580304c43a2367c60488310")
_SALT_T051 = bytes.fromhex("7a4edef4e7ccee5fa4506c19124fc8ccda6e033d")

_LABELS_V1 = (b"quic key", b"quic iv", b"quic hp")
_LABELS_V2 = (b"quicv2 key", b"quicv2 iv", b"quicv2 hp")

SAMPLE_LEN = 16
_ECB = ECB()  # stateless: one for every key
TAG_LEN = 16


@dataclass(frozen=True, slots=True)
class VersionSpec:
    """What differs between the QUIC versions whose Initial packets we can open."""

    salt: bytes
    labels: tuple[bytes, bytes, bytes]  # HKDF labels of the key, IV and header-protection key
    initial_type: int  # long-header packet type bits (0x30 of the first byte, shifted down)
    retry_type: int
    # Retry Integrity Tag key and nonce (RFC 9001 section 5.8); None where we do not know them.
    retry_key: bytes | None = None
    retry_nonce: bytes | None = None
    gquic_frames: bool = False  # Google Q050/T05x: CRYPTO is frame type 0x08 in gQUIC framing
    chlo: bool = False  # the crypto stream carries a gQUIC CHLO (Q050), not a TLS ClientHello


_V1 = VersionSpec(
    _SALT_V1,
    _LABELS_V1,
    initial_type=0,
    retry_type=3,
    retry_key=bytes.fromhex("be0c690b9f66575a1d766b54e368c84e"),
    retry_nonce=bytes.fromhex("461599d35d632bf2239825bb"),
)
_D29 = VersionSpec(
    _SALT_D29,
    _LABELS_V1,
    initial_type=0,
    retry_type=3,
    retry_key=bytes.fromhex("ccce187ed09a09d05728155a6cb96be1"),
    retry_nonce=bytes.fromhex("e54930f97f2136f0530a8c1c"),
)
_D23 = VersionSpec(_SALT_D23, _LABELS_V1, initial_type=0, retry_type=3)
_D22 = VersionSpec(_SALT_D22, _LABELS_V1, initial_type=0, retry_type=3)
# RFC 9369 section 3.2 rotates the long-header type codes so that ossified middleboxes notice.
_V2 = VersionSpec(
    _SALT_V2,
    _LABELS_V2,
    initial_type=1,
    retry_type=0,
    retry_key=bytes.fromhex("8fb4b01b56ac48e260fbcbcead7ccc92"),
    retry_nonce=bytes.fromhex("d86969bc2d7c6d9990efb04a"),
)

VERSION_V1 = 0x00000001
VERSION_V2 = 0x6B3343CF
VERSION_Q050 = 0x51303530
VERSION_T050 = 0x54303530
VERSION_T051 = 0x54303531

VERSIONS: dict[int, VersionSpec] = {
    VERSION_V1: _V1,
    VERSION_V2: _V2,
    0xFF000016: _D22,
    **{0xFF000000 + d: _D23 for d in range(23, 29)},
    **{0xFF000000 + d: _D29 for d in range(29, 35)},
    # Facebook mvfst: its getQuicVersionSalt() gives the v1 salt to its v1 alias and the
    # draft-23 salt to every other mvfst version; its first version followed draft 22.
    0xFACEB001: _D22,
    0xFACEB002: _D23,
    0xFACEB003: _V1,
    0xFACEB00E: _D23,
    0xFACEB010: _D23,
    0xFACEB011: _D23,
    0xFACEB013: _D23,
    VERSION_Q050: VersionSpec(_SALT_Q050, _LABELS_V1, 0, 3, gquic_frames=True, chlo=True),
    VERSION_T050: VersionSpec(_SALT_T050, _LABELS_V1, 0, 3, gquic_frames=True),
    VERSION_T051: VersionSpec(_SALT_T051, _LABELS_V1, 0, 3, gquic_frames=True),
}

# Versions 0x?a?a?a?a are reserved to make servers exercise version negotiation (RFC 9000
# section 15); their keys are the client's choice. Interop clients used the draft-29 salt, which
# is what Wireshark assumes too.
_RESERVED_MASK = 0x0F0F0F0F
_RESERVED_PATTERN = 0x0A0A0A0A


def version_spec(version: int) -> VersionSpec | None:
    """The protection parameters of ``version``, or None when we cannot open its Initials."""
    spec = VERSIONS.get(version)
    if spec is None and version & _RESERVED_MASK == _RESERVED_PATTERN:
        return _D29
    return spec


# The constructor, not the name: naming the digest makes OpenSSL look it up on every call,
# which costs more than the HMAC itself (3.0 µs against 1.8 µs here).
_SHA256 = hashlib.sha256
_BLOCK = 64  # SHA-256 block size: HMAC pads its key to this
_IPAD = bytes(b ^ 0x36 for b in range(256))  # translate tables: key XOR ipad / opad
_OPAD = bytes(b ^ 0x5C for b in range(256))


class _Hmac:
    """HMAC-SHA256 under one key, its padded key blocks hashed once.

    HKDF runs three expansions under the same secret for every new QUIC flow, and every
    Extract uses one of a few fixed salts; ``hmac.digest`` would hash the key blocks anew for
    each (about half its cost).
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            key = _SHA256(key).digest()
        block = key.ljust(_BLOCK, b"\x00")
        self._inner = _SHA256(block.translate(_IPAD))
        self._outer = _SHA256(block.translate(_OPAD))

    def digest(self, msg: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(msg)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


_salt_macs: dict[bytes, _Hmac] = {}  # only the fixed per-version salts above
_infos: dict[tuple[bytes, int], bytes] = {}


def _expand_info(label: bytes, length: int) -> bytes:
    """HkdfLabel with an empty context, followed by HKDF-Expand's first counter byte."""
    info = _infos.get((label, length))
    if info is None:
        full = b"tls13 " + label
        info = length.to_bytes(2, "big") + bytes((len(full),)) + full + b"\x00\x01"
        _infos[(label, length)] = info
    return info


def hkdf_expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """TLS 1.3 HKDF-Expand-Label with an empty context, for outputs of at most one block."""
    return _Hmac(secret).digest(_expand_info(label, length))[:length]


def client_initial_secret(salt: bytes, dcid: bytes) -> bytes:
    salt_mac = _salt_macs.get(salt)
    if salt_mac is None:
        salt_mac = _salt_macs[salt] = _Hmac(salt)
    initial_secret = salt_mac.digest(dcid)  # HKDF-Extract
    return hkdf_expand_label(initial_secret, b"client in", 32)


def derive_key_iv_hp(secret: bytes, labels: tuple[bytes, bytes, bytes]) -> tuple[bytes, ...]:
    key_label, iv_label, hp_label = labels
    mac = _Hmac(secret)
    return (
        mac.digest(_expand_info(key_label, 16))[:16],
        mac.digest(_expand_info(iv_label, 12))[:12],
        mac.digest(_expand_info(hp_label, 16))[:16],
    )


class InitialKeys:
    """AES-128-GCM packet protection and AES-ECB header protection of one Initial secret."""

    __slots__ = ("_aead", "_hp", "_iv")

    def __init__(self, key: bytes, iv: bytes, hp: bytes) -> None:
        self._aead = AESGCM(key)
        self._iv = int.from_bytes(iv, "big")
        # ECB keeps no state between blocks, so one encryptor serves every packet of the flow.
        # AES and ECB are bound at import: looking them up on their modules goes through
        # cryptography's deprecation wrapper, which cost a third of this constructor.
        self._hp = Cipher(AES(hp), _ECB).encryptor()

    @classmethod
    def for_client(cls, spec: VersionSpec, dcid: bytes) -> InitialKeys:
        key, iv, hp = derive_key_iv_hp(client_initial_secret(spec.salt, dcid), spec.labels)
        return cls(key, iv, hp)

    def header_mask(self, sample: bytes) -> bytes:
        return self._hp.update(sample)[:5]

    def open(self, packet_number: int, header: bytes, ciphertext: bytes) -> bytes | None:
        """The plaintext, or None when the tag does not verify (wrong keys or not QUIC)."""
        try:
            return self._aead.decrypt(self._nonce(packet_number), ciphertext, header)
        except InvalidTag:
            return None

    def seal(self, packet_number: int, header: bytes, plaintext: bytes) -> bytes:
        return self._aead.encrypt(self._nonce(packet_number), plaintext, header)

    def _nonce(self, packet_number: int) -> bytes:
        return (self._iv ^ packet_number).to_bytes(12, "big")


def retry_is_authentic(spec: VersionSpec, original_dcid: bytes, retry: bytes) -> bool:
    """Check a Retry packet's integrity tag against the DCID of the client's first Initial.

    Only an on-path server that saw that Initial can produce the tag, so a forged Retry cannot
    steer the keys. Versions without a known tag key (drafts before 29) are taken on trust.
    """
    if spec.retry_key is None or spec.retry_nonce is None:
        return True
    if len(retry) < TAG_LEN + 7:
        return False
    pseudo = bytes((len(original_dcid),)) + original_dcid + retry[:-TAG_LEN]
    try:
        AESGCM(spec.retry_key).decrypt(spec.retry_nonce, retry[-TAG_LEN:], pseudo)
    except InvalidTag:
        return False
    return True


def decode_packet_number(largest: int, truncated: int, nbits: int) -> int:
    """Expand a truncated packet number next to the largest one seen (RFC 9000 appendix A.3)."""
    expected = largest + 1
    window = 1 << nbits
    half = window >> 1
    candidate = (expected & ~(window - 1)) | truncated
    if candidate <= expected - half and candidate < (1 << 62) - window:
        return candidate + window
    if candidate > expected + half and candidate >= window:
        return candidate - window
    return candidate


def open_long_packet(
    keys: InitialKeys, data: bytes, start: int, pn_offset: int, end: int, largest_pn: int
) -> tuple[int, bytes] | None:
    """Remove header and packet protection from the long-header packet ``data[start:end]``.

    ``pn_offset`` is where its (protected) packet number starts. Returns the full packet number
    and the plaintext payload, or None when the packet does not authenticate with ``keys``.
    """
    sample_at = pn_offset + 4  # sampled as if the packet number were 4 bytes (RFC 9001 5.4.2)
    if sample_at + SAMPLE_LEN > end:
        raise TruncatedError("Initial packet too short to sample")
    mask = keys.header_mask(data[sample_at : sample_at + SAMPLE_LEN])
    first = data[start] ^ (mask[0] & 0x0F)
    pn_len = (first & 0x03) + 1
    payload_at = pn_offset + pn_len
    if payload_at + TAG_LEN > end:
        raise DecodeError("Initial packet shorter than its tag")
    truncated = int.from_bytes(data[pn_offset:payload_at], "big") ^ int.from_bytes(
        mask[1 : 1 + pn_len], "big"
    )
    pn = decode_packet_number(largest_pn, truncated, pn_len * 8)
    header = bytes((first,)) + data[start + 1 : pn_offset] + truncated.to_bytes(pn_len, "big")
    plain = keys.open(pn, header, data[payload_at:end])
    if plain is None:
        return None
    return pn, plain


def protect_long_packet(
    keys: InitialKeys, header: bytes, packet_number: int, payload: bytes
) -> bytes:
    """Encrypt and header-protect one long-header packet; ``header`` ends with the plain packet
    number. Lantern never sends packets: this builds test and benchmark traffic.
    """
    pn_len = (header[0] & 0x03) + 1
    pn_offset = len(header) - pn_len
    sealed = keys.seal(packet_number, header, payload)
    sample_at = 4 - pn_len
    mask = keys.header_mask(sealed[sample_at : sample_at + SAMPLE_LEN])
    protected_pn = bytes(b ^ m for b, m in zip(header[pn_offset:], mask[1:], strict=False))
    first = header[0] ^ (mask[0] & 0x0F)
    return bytes((first,)) + header[1:pn_offset] + protected_pn + sealed
