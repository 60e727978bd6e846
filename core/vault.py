"""Envelope encryption at rest: versioned master keys wrap per-tenant data keys that seal secrets.

Layout of every stored value (all integers big-endian)::

    wrapped DEK  b"BW" | format u8 | KEK version u32 | nonce[12] | AES-256-GCM(DEK) + tag[16]
    secret       b"BS" | format u8 | nonce[12] | AES-256-GCM(plaintext) + tag[16]
    blob         b"BB" | format u8 | nonce[12] | AES-256-GCM(data) + tag[16]

Associated data is a length-prefixed list of secret-free fields::

    DEK layer     (format, "dek", tenant id, KEK version)
    secret layer  (format, "secret", tenant id, secret id, provider, secret version)
    blob layer    (format, "blob", purpose, tenant id, object id[, version])

The KEK version is bound in the wrap layer only, so rewrapping a DEK never invalidates the
secrets it protects. Errors are the ``VaultError`` branch of ``core.errors``::

    VaultError          wrap limit reached, misuse of the ring
    ├── MasterKeyError  missing, empty or malformed master key (start-up stops)
    ├── DecryptionError unversioned, truncated, tampered or foreign ciphertext
    └── KeyRetiredError wrapped under a master key version that is not loaded
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import stat
import struct
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Final, NoReturn, final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from core.errors import DecryptionError, KeyRetiredError, MasterKeyError, VaultError

__all__ = [
    "FORMAT_VERSION",
    "MAX_WRAPS_PER_KEK",
    "DataKey",
    "MasterKeyRing",
    "Vault",
    "decrypt_blob",
    "encrypt_blob",
]

FORMAT_VERSION: Final = 1
MAX_WRAPS_PER_KEK: Final = 2**28  # require rotation far below 2^32 random-nonce GCM uses
KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
MAX_KEK_VERSION: Final = 2**32 - 1

_MAGIC_DEK: Final = b"BW"
_MAGIC_SECRET: Final = b"BS"
_MAGIC_BLOB: Final = b"BB"
_DEK_HEADER: Final = struct.Struct(">2sBI")  # magic, format, KEK version
_SEALED_HEADER: Final = struct.Struct(">2sB")  # magic, format
_EQUALITY_INFO: Final = b"byokbot equality v1"
_ENTRY = re.compile(r"v([0-9]+):(.*)", re.DOTALL)


def _ad(*fields: str | int) -> bytes:
    """Length-prefix every field so no two field lists encode to the same bytes."""
    parts = [struct.pack(">I", len(fields))]
    for item in fields:
        raw = str(item).encode()
        parts.append(struct.pack(">I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _check_id(name: str, value: str) -> None:
    # An empty id would make a ciphertext portable between rows that forgot to set it.
    if not isinstance(value, str) or not value:
        raise VaultError(f"{name} must be a non-empty string")


def _seal(aead: AESGCM, magic: bytes, plaintext: bytes, ad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    header = _SEALED_HEADER.pack(magic, FORMAT_VERSION)
    return header + nonce + aead.encrypt(nonce, bytes(plaintext), ad)


def _open(aead: AESGCM, magic: bytes, blob: bytes, ad: bytes, what: str) -> bytes:
    data = bytes(blob)
    minimum = _SEALED_HEADER.size + NONCE_BYTES + TAG_BYTES
    if len(data) < minimum:
        raise DecryptionError(f"{what} is truncated or not an encrypted value")
    got_magic, version = _SEALED_HEADER.unpack_from(data)
    if got_magic != magic:
        raise DecryptionError(f"{what} is not an encrypted value of this kind")
    if version != FORMAT_VERSION:
        raise DecryptionError(f"{what} has unknown format version {version}")
    nonce = data[_SEALED_HEADER.size : _SEALED_HEADER.size + NONCE_BYTES]
    try:
        return aead.decrypt(nonce, data[_SEALED_HEADER.size + NONCE_BYTES :], ad)
    except InvalidTag:
        raise DecryptionError(f"{what} failed authentication") from None


def _decode_key(text: str, *, source: str, version: int) -> bytes:
    value = text.strip()
    if not value:
        raise MasterKeyError(f"{source}: master key v{version} is empty")
    # Accept both alphabets and missing padding: people generate keys with different tools.
    value = value.replace("-", "+").replace("_", "/")
    value += "=" * (-len(value) % 4)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise MasterKeyError(f"{source}: master key v{version} is not valid base64") from None
    if len(raw) != KEY_BYTES:
        raise MasterKeyError(
            f"{source}: master key v{version} must be {KEY_BYTES} bytes of base64 (got {len(raw)})"
        )
    return raw


@final
class MasterKeyRing:
    """Versioned 32-byte KEKs; one is primary. ``repr`` never shows key bytes."""

    __slots__ = ("_keys", "_primary")

    def __init__(self, keys: Mapping[int, bytes], *, primary: int) -> None:
        if not keys:
            raise MasterKeyError("master key ring is empty")
        checked: dict[int, bytes] = {}
        for version, key in keys.items():
            if isinstance(version, bool) or not isinstance(version, int):
                raise MasterKeyError("master key versions must be integers")
            if not 1 <= version <= MAX_KEK_VERSION:
                raise MasterKeyError(f"master key version {version} is out of range")
            if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
                raise MasterKeyError(f"master key v{version} must be {KEY_BYTES} bytes")
            checked[version] = bytes(key)
        if primary not in checked:
            raise MasterKeyError(f"primary master key v{primary} is not in the ring")
        self._keys = checked
        self._primary = primary

    @property
    def primary_version(self) -> int:
        return self._primary

    @property
    def versions(self) -> tuple[int, ...]:
        return tuple(sorted(self._keys))

    def key(self, version: int) -> bytes:
        """Return the KEK bytes of ``version``; raise ``KeyRetiredError`` if not loaded."""
        try:
            return self._keys[version]
        except KeyError:
            raise KeyRetiredError(f"master key v{version} is not loaded") from None

    def __repr__(self) -> str:
        return f"MasterKeyRing(versions={self.versions}, primary={self._primary})"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("MasterKeyRing cannot be pickled")

    @classmethod
    def parse(cls, text: str, *, source: str) -> MasterKeyRing:
        """Parse one base64 key (version 1) or ``v<N>:<base64>`` entries (lines or commas).

        Blank lines and ``#`` comment lines are ignored; the highest version is primary.
        Error messages name ``source`` and never contain key text.
        """
        if not text.strip():
            raise MasterKeyError(f"{source}: master key is missing or empty")
        entries: list[str] = []
        for line in text.splitlines():
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            entries.extend(part.strip() for part in stripped.split(",") if part.strip())
        if not entries:
            raise MasterKeyError(f"{source}: master key is missing or empty")
        if len(entries) == 1 and ":" not in entries[0]:
            return cls({1: _decode_key(entries[0], source=source, version=1)}, primary=1)
        keys: dict[int, bytes] = {}
        for position, entry in enumerate(entries, start=1):
            match = _ENTRY.fullmatch(entry)
            if match is None:
                raise MasterKeyError(f"{source}: entry {position} is not of the form v<N>:<base64>")
            version = int(match.group(1))
            if not 1 <= version <= MAX_KEK_VERSION:
                raise MasterKeyError(f"{source}: master key version {version} is out of range")
            if version in keys:
                raise MasterKeyError(f"{source}: master key v{version} appears twice")
            keys[version] = _decode_key(match.group(2), source=source, version=version)
        return cls(keys, primary=max(keys))

    @classmethod
    def load(
        cls,
        *,
        env_value: str | None,
        file: Path,
        create: bool,
        env_name: str = "BYOKBOT_MASTER_KEY",
    ) -> MasterKeyRing:
        """Load the ring from the environment value if set (even empty), else from ``file``.

        A missing file is created (mode 0600, one fresh key) only when ``create`` is true.
        ``env_name`` only names the variable in error messages.
        """
        if env_value is not None:
            return cls.parse(env_value, source=env_name)
        path = Path(file)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            if not create:
                raise MasterKeyError(
                    f"{path}: master key file not found (set {env_name} or create it)"
                ) from None
            return cls._create(path)
        except OSError as exc:
            raise MasterKeyError(f"{path}: cannot read master key file ({exc.strerror})") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise MasterKeyError(f"{path}: master key file is not a regular file")
            mode = stat.S_IMODE(info.st_mode)
            if mode & 0o077:
                raise MasterKeyError(
                    f"{path}: master key file must be mode 0600 (is {mode:04o}); "
                    "run chmod 600 on it"
                )
            with os.fdopen(fd, "r", encoding="utf-8", closefd=False) as handle:
                text = handle.read()
        except UnicodeDecodeError:
            raise MasterKeyError(f"{path}: master key file is not text") from None
        finally:
            os.close(fd)
        return cls.parse(text, source=str(path))

    @classmethod
    def _create(cls, path: Path) -> MasterKeyRing:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        ring = cls({1: os.urandom(KEY_BYTES)}, primary=1)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            # Another process created it between our read and this write: use theirs.
            return cls.load(env_value=None, file=path, create=False)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(ring.dump())
            handle.flush()
            os.fsync(handle.fileno())
        return ring

    def with_new_primary(self) -> tuple[MasterKeyRing, int]:
        """Return a ring with a fresh random KEK at version max+1, made primary."""
        version = max(self._keys) + 1
        keys = dict(self._keys)
        keys[version] = os.urandom(KEY_BYTES)
        return MasterKeyRing(keys, primary=version), version

    def without(self, version: int) -> MasterKeyRing:
        """Return a ring with ``version`` retired. The primary cannot be retired."""
        if version == self._primary:
            raise VaultError(f"master key v{version} is primary and cannot be retired")
        if version not in self._keys:
            raise KeyRetiredError(f"master key v{version} is not loaded")
        keys = {v: k for v, k in self._keys.items() if v != version}
        return MasterKeyRing(keys, primary=self._primary)

    def dump(self) -> str:
        """Return the key-file text: one ``v<N>:<base64>`` line per version."""
        return "".join(f"v{v}:{base64.b64encode(self._keys[v]).decode()}\n" for v in self.versions)

    @staticmethod
    def write_file(path: Path, ring: MasterKeyRing) -> None:
        """Atomically replace ``path`` with ``ring.dump()``, mode 0600."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(ring.dump())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@final
class DataKey:
    """A tenant's unwrapped DEK. Masked ``repr``; cannot be pickled or copied."""

    __slots__ = ("_aead", "_equality_key", "_key", "tenant_id")

    def __init__(self, tenant_id: str, key: bytes) -> None:
        _check_id("tenant_id", tenant_id)
        if len(key) != KEY_BYTES:
            raise VaultError(f"a data key must be {KEY_BYTES} bytes")
        self.tenant_id = tenant_id
        self._key = bytes(key)
        self._aead = AESGCM(self._key)
        # A separate derived key, so equality tags reveal nothing about ciphertexts.
        self._equality_key = HKDF(
            algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=_EQUALITY_INFO
        ).derive(self._key)

    def equality_tag(self, value: str) -> str:
        """HMAC-SHA256 of ``value`` under a key derived from the DEK, hex."""
        return hmac.new(self._equality_key, value.encode(), hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return f"DataKey(tenant_id={self.tenant_id!r}, key='********')"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("DataKey cannot be pickled or copied")


def _blob_ad(dek: DataKey, purpose: str, object_id: str, version: int | None) -> bytes:
    if version is None:
        return _ad(FORMAT_VERSION, "blob", purpose, dek.tenant_id, object_id)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise VaultError("a blob version must be a positive integer")
    return _ad(FORMAT_VERSION, "blob", purpose, dek.tenant_id, object_id, version)


def encrypt_blob(
    dek: DataKey, data: bytes, *, purpose: str, object_id: str, version: int | None = None
) -> bytes:
    """Seal ``data`` (e.g. agent memory) bound to (purpose, tenant, object id[, version]).

    With a ``version`` the blob opens only under that same version, so a store that keeps a
    growing version beside the blob detects an older blob copied back (rollback).
    """
    _check_id("purpose", purpose)
    _check_id("object_id", object_id)
    return _seal(dek._aead, _MAGIC_BLOB, data, _blob_ad(dek, purpose, object_id, version))


def decrypt_blob(
    dek: DataKey, blob: bytes, *, purpose: str, object_id: str, version: int | None = None
) -> bytes:
    """Open a value from ``encrypt_blob``; raise ``DecryptionError`` on any mismatch."""
    ad = _blob_ad(dek, purpose, object_id, version)
    return _open(dek._aead, _MAGIC_BLOB, blob, ad, "encrypted blob")


class Vault:
    """Wraps tenant DEKs under the primary KEK and seals secrets under DEKs. Thread-safe."""

    def __init__(
        self,
        ring: MasterKeyRing,
        *,
        wrap_counts: Mapping[int, int] | None = None,
        max_wraps: int = MAX_WRAPS_PER_KEK,
    ) -> None:
        if max_wraps < 1:
            raise VaultError("max_wraps must be at least 1")
        self._lock = threading.Lock()
        self._ring = ring
        self._counts: dict[int, int] = dict(wrap_counts or {})
        self._max_wraps = max_wraps
        self._aeads: dict[int, tuple[bytes, AESGCM]] = {}

    @property
    def ring(self) -> MasterKeyRing:
        return self._ring

    def set_ring(self, ring: MasterKeyRing) -> None:
        """Hot-swap the ring after a rotation; later wraps use its primary."""
        with self._lock:
            self._ring = ring
            # Drop cached ciphers of retired versions so their keys leave memory with the ring.
            self._aeads = {v: a for v, a in self._aeads.items() if v in ring.versions}

    @property
    def wrap_counts(self) -> dict[int, int]:
        """Wraps done per KEK version, including the counts passed in. A copy."""
        with self._lock:
            return dict(self._counts)

    def _kek(self, ring: MasterKeyRing, version: int) -> AESGCM:
        key = ring.key(version)
        cached = self._aeads.get(version)
        # Keyed by the bytes as well: a new ring may carry a different key under a version.
        if cached is None or not hmac.compare_digest(cached[0], key):
            cached = (key, AESGCM(key))
            self._aeads[version] = cached
        return cached[1]

    def _reserve_wrap(self) -> tuple[MasterKeyRing, int]:
        with self._lock:
            ring = self._ring
            version = ring.primary_version
            done = self._counts.get(version, 0)
            if done >= self._max_wraps:
                raise VaultError(
                    f"master key v{version} has wrapped {done} data keys "
                    f"(limit {self._max_wraps}); rotate it"
                )
            self._counts[version] = done + 1
            return ring, version

    def _wrap(self, tenant_id: str, key: bytes) -> bytes:
        ring, version = self._reserve_wrap()
        nonce = os.urandom(NONCE_BYTES)
        header = _DEK_HEADER.pack(_MAGIC_DEK, FORMAT_VERSION, version)
        ad = _ad(FORMAT_VERSION, "dek", tenant_id, version)
        return header + nonce + self._kek(ring, version).encrypt(nonce, key, ad)

    def new_data_key(self, tenant_id: str) -> tuple[DataKey, bytes]:
        """Create a random DEK for ``tenant_id``; return it and its wrapped form to store."""
        _check_id("tenant_id", tenant_id)
        key = os.urandom(KEY_BYTES)
        return DataKey(tenant_id, key), self._wrap(tenant_id, key)

    @staticmethod
    def kek_version_of(wrapped: bytes) -> int:
        """Return the KEK version in a wrapped DEK's header; ``DecryptionError`` if malformed."""
        data = bytes(wrapped)
        if len(data) != _DEK_HEADER.size + NONCE_BYTES + KEY_BYTES + TAG_BYTES:
            raise DecryptionError("wrapped data key has the wrong length")
        magic, version, kek_version = _DEK_HEADER.unpack_from(data)
        if magic != _MAGIC_DEK:
            raise DecryptionError("value is not a wrapped data key")
        if version != FORMAT_VERSION:
            raise DecryptionError(f"wrapped data key has unknown format version {version}")
        if kek_version < 1:
            raise DecryptionError("wrapped data key names no master key version")
        return int(kek_version)

    def _unwrap_key(self, tenant_id: str, wrapped: bytes) -> bytes:
        _check_id("tenant_id", tenant_id)
        data = bytes(wrapped)
        version = self.kek_version_of(data)
        aead = self._kek(self._ring, version)  # KeyRetiredError if not loaded
        nonce = data[_DEK_HEADER.size : _DEK_HEADER.size + NONCE_BYTES]
        ad = _ad(FORMAT_VERSION, "dek", tenant_id, version)
        try:
            return aead.decrypt(nonce, data[_DEK_HEADER.size + NONCE_BYTES :], ad)
        except InvalidTag:
            raise DecryptionError("wrapped data key failed authentication") from None

    def unwrap(self, tenant_id: str, wrapped: bytes) -> DataKey:
        """Unwrap a stored DEK of ``tenant_id`` with whichever loaded KEK wrapped it."""
        return DataKey(tenant_id, self._unwrap_key(tenant_id, wrapped))

    def rewrap(self, tenant_id: str, wrapped: bytes) -> bytes:
        """Re-wrap under the primary KEK; a DEK already under the primary comes back as is."""
        if self.kek_version_of(wrapped) == self._ring.primary_version:
            self._unwrap_key(tenant_id, wrapped)  # still authenticate: never bless garbage
            return bytes(wrapped)
        return self._wrap(tenant_id, self._unwrap_key(tenant_id, wrapped))

    def encrypt(
        self, dek: DataKey, plaintext: bytes, *, secret_id: str, provider: str, secret_version: int
    ) -> bytes:
        """Seal a secret bound to (tenant, secret id, provider, secret version)."""
        _check_id("secret_id", secret_id)
        _check_id("provider", provider)
        ad = _ad(FORMAT_VERSION, "secret", dek.tenant_id, secret_id, provider, secret_version)
        return _seal(dek._aead, _MAGIC_SECRET, plaintext, ad)

    def decrypt(
        self, dek: DataKey, blob: bytes, *, secret_id: str, provider: str, secret_version: int
    ) -> bytes:
        """Open a sealed secret; ``DecryptionError`` unless every bound field matches."""
        ad = _ad(FORMAT_VERSION, "secret", dek.tenant_id, secret_id, provider, secret_version)
        return _open(dek._aead, _MAGIC_SECRET, blob, ad, "encrypted secret")

    # The memory layer may reach these through the vault it already holds.
    encrypt_blob = staticmethod(encrypt_blob)
    decrypt_blob = staticmethod(decrypt_blob)
