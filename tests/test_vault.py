"""Envelope encryption: round trips, tampering, binding, rotation, concurrency, master keys."""

from __future__ import annotations

import base64
import copy
import os
import pickle
import random
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from core.errors import DecryptionError, KeyRetiredError, MasterKeyError, VaultError
from core.vault import (
    FORMAT_VERSION,
    MAX_WRAPS_PER_KEK,
    DataKey,
    MasterKeyRing,
    Vault,
    decrypt_blob,
    encrypt_blob,
)
from tests.canaries import anthropic_key

SECRET_AD = {"secret_id": "sec-1", "provider": "anthropic", "secret_version": 1}


def ring_of(*versions: int) -> MasterKeyRing:
    return MasterKeyRing({v: os.urandom(32) for v in versions}, primary=max(versions))


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def flip(data: bytes, index: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


@pytest.fixture
def vault() -> Vault:
    return Vault(ring_of(1))


# --- 1. round trip and every way a value must fail to open -------------------------------------


def test_round_trip(vault: Vault) -> None:
    key = anthropic_key().encode()
    dek, wrapped = vault.new_data_key("tenant-a")
    blob = vault.encrypt(dek, key, **SECRET_AD)

    again = vault.unwrap("tenant-a", wrapped)

    assert vault.decrypt(again, blob, **SECRET_AD) == key
    assert key not in blob
    assert key not in wrapped
    assert blob[:3] == b"BS" + bytes([FORMAT_VERSION])
    assert Vault.kek_version_of(wrapped) == 1


def test_two_encryptions_of_one_value_differ(vault: Vault) -> None:
    dek, _ = vault.new_data_key("t")

    assert vault.encrypt(dek, b"same", **SECRET_AD) != vault.encrypt(dek, b"same", **SECRET_AD)


@pytest.mark.parametrize(
    ("field", "value"),
    [("secret_id", "sec-2"), ("provider", "openai"), ("secret_version", 2)],
)
def test_mismatched_associated_data_fails(vault: Vault, field: str, value: object) -> None:
    dek, _ = vault.new_data_key("tenant-a")
    blob = vault.encrypt(dek, b"payload", **SECRET_AD)

    with pytest.raises(DecryptionError):
        vault.decrypt(dek, blob, **{**SECRET_AD, field: value})  # type: ignore[arg-type]


def test_wrong_tenant_in_associated_data_fails(vault: Vault) -> None:
    dek, wrapped = vault.new_data_key("tenant-a")
    blob = vault.encrypt(dek, b"payload", **SECRET_AD)

    with pytest.raises(DecryptionError):
        vault.unwrap("tenant-b", wrapped)
    # Same key bytes but labelled for another tenant: the secret layer binds the tenant too.
    relabelled = DataKey("tenant-b", dek._key)
    with pytest.raises(DecryptionError):
        vault.decrypt(relabelled, blob, **SECRET_AD)


def test_every_flipped_bit_in_a_secret_fails(vault: Vault) -> None:
    dek, _ = vault.new_data_key("t")
    blob = vault.encrypt(dek, b"sk-ant-short-secret", **SECRET_AD)
    # header (3) + nonce (12) + ciphertext (19) + tag (16): every byte, a different bit each.
    assert len(blob) == 3 + 12 + 19 + 16

    for index in range(len(blob)):
        with pytest.raises(DecryptionError):
            vault.decrypt(dek, flip(blob, index, index % 8), **SECRET_AD)


@pytest.mark.parametrize(
    "region",
    ["nonce", "ciphertext", "tag"],
)
def test_flipped_bit_by_region_fails(vault: Vault, region: str) -> None:
    dek, _ = vault.new_data_key("t")
    blob = vault.encrypt(dek, b"0123456789", **SECRET_AD)
    index = {"nonce": 3, "ciphertext": 15, "tag": len(blob) - 1}[region]

    with pytest.raises(DecryptionError):
        vault.decrypt(dek, flip(blob, index, 7), **SECRET_AD)


def test_invalid_tag_never_escapes_and_is_not_chained(vault: Vault) -> None:
    dek, wrapped = vault.new_data_key("t")
    blob = vault.encrypt(dek, b"payload", **SECRET_AD)

    with pytest.raises(DecryptionError) as secret_error:
        vault.decrypt(dek, flip(blob, 20), **SECRET_AD)
    with pytest.raises(DecryptionError) as dek_error:
        vault.unwrap("t", flip(wrapped, 30))

    for caught in (secret_error, dek_error):
        assert str(caught.value).endswith("failed authentication")
        assert caught.value.__suppress_context__


def test_every_flipped_bit_in_a_wrapped_dek_fails(vault: Vault) -> None:
    _, wrapped = vault.new_data_key("t")
    assert len(wrapped) == 7 + 12 + 32 + 16

    for index in range(len(wrapped)):
        for bit in range(8):
            tampered = flip(wrapped, index, bit)
            # A flipped KEK version names an unloaded version (or none): refused either way.
            expected = (KeyRetiredError, DecryptionError) if 3 <= index < 7 else DecryptionError
            with pytest.raises(expected):
                vault.unwrap("t", tampered)


@pytest.mark.parametrize("keep", [0, 1, 2, 3, 14, 15, 30, -1])
def test_truncated_values_fail(vault: Vault, keep: int) -> None:
    dek, wrapped = vault.new_data_key("t")
    blob = vault.encrypt(dek, b"0123456789", **SECRET_AD)

    with pytest.raises(DecryptionError):
        vault.decrypt(dek, blob[:keep], **SECRET_AD)
    with pytest.raises(DecryptionError):
        vault.unwrap("t", wrapped[:keep])


def test_unversioned_plaintext_is_refused_not_returned(vault: Vault) -> None:
    dek, _ = vault.new_data_key("t")
    plain = anthropic_key().encode()

    with pytest.raises(DecryptionError) as secret_error:
        vault.decrypt(dek, plain, **SECRET_AD)
    with pytest.raises(DecryptionError) as dek_error:
        vault.unwrap("t", plain)
    with pytest.raises(DecryptionError) as blob_error:
        decrypt_blob(dek, plain, purpose="memory", object_id="m1")
    for caught in (secret_error, dek_error, blob_error):
        assert plain.decode()[-20:] not in repr(caught.value)
        assert caught.value.__cause__ is None


def test_unknown_format_version_is_refused(vault: Vault) -> None:
    dek, wrapped = vault.new_data_key("t")
    blob = vault.encrypt(dek, b"x", **SECRET_AD)

    with pytest.raises(DecryptionError, match="format version 2"):
        vault.decrypt(dek, blob[:2] + b"\x02" + blob[3:], **SECRET_AD)
    with pytest.raises(DecryptionError, match="format version 2"):
        vault.unwrap("t", wrapped[:2] + b"\x02" + wrapped[3:])


def test_a_wrapped_dek_is_not_a_secret_and_vice_versa(vault: Vault) -> None:
    dek, wrapped = vault.new_data_key("t")
    blob = vault.encrypt(dek, b"x" * 32, **SECRET_AD)
    memory = encrypt_blob(dek, b"x", purpose="memory", object_id="m1")

    with pytest.raises(DecryptionError):
        vault.decrypt(dek, wrapped, **SECRET_AD)
    with pytest.raises(DecryptionError):
        vault.unwrap("t", blob)
    with pytest.raises(DecryptionError):
        vault.decrypt(dek, memory, **SECRET_AD)
    with pytest.raises(DecryptionError):
        decrypt_blob(dek, blob, purpose="memory", object_id="m1")


def test_wrong_kek_with_same_version_fails() -> None:
    _, wrapped = Vault(ring_of(1)).new_data_key("t")
    other = Vault(ring_of(1))

    with pytest.raises(DecryptionError):
        other.unwrap("t", wrapped)


def test_kek_version_of_rejects_malformed_headers() -> None:
    _, wrapped = Vault(ring_of(3)).new_data_key("t")

    assert Vault.kek_version_of(wrapped) == 3
    for bad in (
        b"",
        b"BW",
        wrapped[:-1],
        b"XX" + wrapped[2:],
        wrapped[:3] + bytes(4) + wrapped[7:],
    ):
        with pytest.raises(DecryptionError):
            Vault.kek_version_of(bad)


def test_bad_identifiers_are_refused(vault: Vault) -> None:
    with pytest.raises(VaultError):
        vault.new_data_key("")
    dek, _ = vault.new_data_key("t")
    with pytest.raises(VaultError):
        vault.encrypt(dek, b"x", secret_id="", provider="p", secret_version=1)
    with pytest.raises(VaultError):
        encrypt_blob(dek, b"x", purpose="memory", object_id="")


# --- 2. tenant isolation -----------------------------------------------------------------------


def test_tenant_a_ciphertext_in_tenant_b_row_fails(vault: Vault) -> None:
    dek_a, wrapped_a = vault.new_data_key("tenant-a")
    dek_b, wrapped_b = vault.new_data_key("tenant-b")
    blob_a = vault.encrypt(dek_a, b"a's key", **SECRET_AD)

    with pytest.raises(DecryptionError):
        vault.decrypt(dek_b, blob_a, **SECRET_AD)
    # Copying A's wrapped DEK into B's row does not help either.
    with pytest.raises(DecryptionError):
        vault.unwrap("tenant-b", wrapped_a)
    assert vault.decrypt(vault.unwrap("tenant-a", wrapped_a), blob_a, **SECRET_AD) == b"a's key"
    assert vault.unwrap("tenant-b", wrapped_b).tenant_id == "tenant-b"


def test_blob_helpers_bind_purpose_tenant_and_object(vault: Vault) -> None:
    dek_a, _ = vault.new_data_key("tenant-a")
    dek_b, _ = vault.new_data_key("tenant-b")
    blob = encrypt_blob(dek_a, b"memory", purpose="memory", object_id="m1")

    assert decrypt_blob(dek_a, blob, purpose="memory", object_id="m1") == b"memory"
    assert Vault.decrypt_blob(dek_a, blob, purpose="memory", object_id="m1") == b"memory"
    for dek, purpose, object_id in [
        (dek_b, "memory", "m1"),
        (dek_a, "transcript", "m1"),
        (dek_a, "memory", "m2"),
    ]:
        with pytest.raises(DecryptionError):
            decrypt_blob(dek, blob, purpose=purpose, object_id=object_id)


# --- data keys ---------------------------------------------------------------------------------


def test_data_key_is_masked_and_cannot_be_pickled_or_copied(vault: Vault) -> None:
    dek, _ = vault.new_data_key("tenant-a")

    assert repr(dek) == "DataKey(tenant_id='tenant-a', key='********')"
    assert str(dek) == repr(dek)
    assert dek._key.hex() not in repr(dek)
    with pytest.raises(TypeError):
        pickle.dumps(dek)
    with pytest.raises(TypeError):
        copy.copy(dek)
    with pytest.raises(AttributeError):
        dek.extra = 1  # type: ignore[attr-defined]


def test_equality_tag_is_stable_per_tenant_and_keyed(vault: Vault) -> None:
    dek_a, wrapped_a = vault.new_data_key("tenant-a")
    dek_b, _ = vault.new_data_key("tenant-b")
    key = anthropic_key()

    tag = dek_a.equality_tag(key)

    assert tag == vault.unwrap("tenant-a", wrapped_a).equality_tag(key)
    assert len(tag) == 64
    assert tag != dek_a.equality_tag(anthropic_key())
    assert tag != dek_b.equality_tag(key)
    assert key not in tag


# --- wrap counting -----------------------------------------------------------------------------


def test_wraps_are_counted_and_capped() -> None:
    vault = Vault(ring_of(1), wrap_counts={1: 5}, max_wraps=7)
    dek, wrapped = vault.new_data_key("t")
    vault.new_data_key("t")

    assert vault.wrap_counts == {1: 7}
    with pytest.raises(VaultError, match=r"master key v1 has wrapped 7 .*rotate it"):
        vault.new_data_key("t")
    assert vault.wrap_counts == {1: 7}
    # Rotation lifts the cap; rewrap counts against the new primary.
    ring, version = vault.ring.with_new_primary()
    vault.set_ring(ring)
    rewrapped = vault.rewrap("t", wrapped)
    assert vault.rewrap("t", rewrapped) == rewrapped  # already primary: no wrap, no count
    assert vault.wrap_counts == {1: 7, version: 1}
    assert vault.unwrap("t", rewrapped).equality_tag("x") == dek.equality_tag("x")


def test_wrap_counts_property_is_a_copy(vault: Vault) -> None:
    counts = vault.wrap_counts
    counts[1] = 99

    assert vault.wrap_counts == {}
    assert MAX_WRAPS_PER_KEK == 2**28


# --- 3. rotation matrix ------------------------------------------------------------------------


def test_rotation_matrix() -> None:
    vault = Vault(ring_of(1))
    rows: list[tuple[str, bytes, bytes, bytes]] = []  # tenant, wrapped DEK, secret, plaintext
    for generation in range(4):
        for n in range(3):
            tenant = f"tenant-{generation}-{n}"
            dek, wrapped = vault.new_data_key(tenant)
            plain = anthropic_key().encode()
            rows.append((tenant, wrapped, vault.encrypt(dek, plain, **SECRET_AD), plain))
        if generation < 3:
            ring, _ = vault.ring.with_new_primary()
            vault.set_ring(ring)

    def check_all_readable() -> None:
        for tenant, wrapped, blob, plain in rows:
            assert vault.decrypt(vault.unwrap(tenant, wrapped), blob, **SECRET_AD) == plain

    assert vault.ring.versions == (1, 2, 3, 4)
    assert sorted({Vault.kek_version_of(w) for _, w, _, _ in rows}) == [1, 2, 3, 4]
    check_all_readable()

    # An interrupted rewrap: only half the rows were lifted when the process stopped.
    half = len(rows) // 2
    rows[:half] = [(t, vault.rewrap(t, w), b, p) for t, w, b, p in rows[:half]]
    check_all_readable()
    # The rerun finishes the job and is idempotent for rows already done.
    rows[:] = [(t, vault.rewrap(t, w), b, p) for t, w, b, p in rows]
    assert {Vault.kek_version_of(w) for _, w, _, _ in rows} == {4}
    again = [vault.rewrap(t, w) for t, w, _, _ in rows]
    assert again == [w for _, w, _, _ in rows]
    check_all_readable()

    # Nothing remains under v1..v3: retire them; everything is still readable.
    for version in (1, 2, 3):
        vault.set_ring(vault.ring.without(version))
    assert vault.ring.versions == (4,)
    check_all_readable()


def test_dek_under_a_retired_version_raises_key_retired() -> None:
    vault = Vault(ring_of(1))
    _, old = vault.new_data_key("t")
    ring, _ = vault.ring.with_new_primary()
    vault.set_ring(ring.without(1))

    with pytest.raises(KeyRetiredError, match="v1"):
        vault.unwrap("t", old)
    with pytest.raises(KeyRetiredError):
        vault.rewrap("t", old)


def test_primary_cannot_be_retired_and_unknown_versions_are_reported() -> None:
    ring = ring_of(1, 2)

    with pytest.raises(VaultError, match="primary"):
        ring.without(2)
    with pytest.raises(KeyRetiredError):
        ring.without(5)
    with pytest.raises(KeyRetiredError):
        ring.key(5)


def test_rewrap_of_an_already_primary_dek_still_authenticates(vault: Vault) -> None:
    _, wrapped = vault.new_data_key("t")

    with pytest.raises(DecryptionError):
        vault.rewrap("t", flip(wrapped, len(wrapped) - 1))
    with pytest.raises(DecryptionError):
        vault.rewrap("other", wrapped)


# --- 4. concurrency ----------------------------------------------------------------------------


def test_concurrent_encrypt_decrypt_rotate_rewrap() -> None:
    vault = Vault(ring_of(1))
    lock = threading.Lock()
    rows: dict[str, tuple[bytes, bytes, bytes]] = {}  # tenant -> (wrapped, blob, plaintext)
    unexpected: list[BaseException] = []
    stop = threading.Event()

    def writer(worker: int) -> None:
        for n in range(100_000):
            if stop.is_set():
                return
            tenant = f"w{worker}-{n % 40}"  # a small pool, so rewrap passes stay short
            dek, wrapped = vault.new_data_key(tenant)
            plain = os.urandom(24)
            blob = vault.encrypt(dek, plain, **SECRET_AD)
            with lock:
                rows[tenant] = (wrapped, blob, plain)

    def reader(worker: int) -> None:
        rng = random.Random(worker)
        while not stop.is_set():
            with lock:
                if not rows:
                    continue
                tenant = rng.choice(list(rows))
                wrapped, blob, plain = rows[tenant]
            try:
                dek = vault.unwrap(tenant, wrapped)
            except KeyRetiredError:
                # The "too old" case: wrapped under a version retired before its rewrap landed.
                continue
            assert vault.decrypt(dek, blob, **SECRET_AD) == plain

    def rewrapper() -> None:
        while not stop.is_set():
            with lock:
                snapshot = list(rows.items())
            for tenant, (wrapped, blob, plain) in snapshot:
                try:
                    lifted = vault.rewrap(tenant, wrapped)
                except KeyRetiredError:
                    continue
                with lock:
                    if rows.get(tenant, (b"",))[0] == wrapped:
                        rows[tenant] = (lifted, blob, plain)

    def rotator() -> None:
        while not stop.is_set():
            ring, _ = vault.ring.with_new_primary()
            vault.set_ring(ring)
            time.sleep(0.05)
            with lock:
                in_use = {Vault.kek_version_of(w) for w, _, _ in rows.values()}
            current = vault.ring
            for version in current.versions:
                if version != current.primary_version and version not in in_use:
                    vault.set_ring(vault.ring.without(version))

    def guard(target: Callable[..., None], *args: int) -> threading.Thread:
        def run() -> None:
            try:
                target(*args)
            except BaseException as exc:  # collected and asserted below
                unexpected.append(exc)
                stop.set()

        return threading.Thread(target=run)

    threads = [guard(writer, i) for i in range(3)]
    threads += [guard(reader, i) for i in range(3)]
    threads += [guard(rewrapper), guard(rotator)]
    for thread in threads:
        thread.start()
    stop.wait(2.0)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)

    assert unexpected == []
    assert all(not thread.is_alive() for thread in threads)
    assert len(rows) > 0
    assert vault.ring.primary_version > 1
    assert sum(vault.wrap_counts.values()) >= len(rows)
    # After the dust settles, one more rewrap pass makes every row readable under the primary.
    for tenant, (wrapped, blob, plain) in rows.items():
        try:
            lifted = vault.rewrap(tenant, wrapped)
        except KeyRetiredError:
            continue
        assert vault.decrypt(vault.unwrap(tenant, lifted), blob, **SECRET_AD) == plain


# --- 5. nonces ---------------------------------------------------------------------------------


def test_hundred_thousand_encryptions_never_repeat_a_nonce(vault: Vault) -> None:
    dek, _ = vault.new_data_key("t")
    count = 100_000

    nonces = {vault.encrypt(dek, b"x", **SECRET_AD)[3:15] for _ in range(count)}

    assert len(nonces) == count


# --- 6. master key parsing and loading ---------------------------------------------------------


def test_parse_single_value_is_version_one() -> None:
    raw = os.urandom(32)

    ring = MasterKeyRing.parse(f"  {b64(raw)}\n", source="BYOKBOT_MASTER_KEY")

    assert ring.versions == (1,)
    assert ring.primary_version == 1
    assert ring.key(1) == raw


def test_parse_versioned_lines_and_commas_with_comments() -> None:
    keys = {v: os.urandom(32) for v in (1, 2, 3)}
    text = (
        "# rotated 2026-11\n\n"
        f"v1:{b64(keys[1])}\n"
        f"v3:{base64.urlsafe_b64encode(keys[3]).decode().rstrip('=')}, v2:{b64(keys[2])}\n"
    )

    ring = MasterKeyRing.parse(text, source="key file")

    assert ring.versions == (1, 2, 3)
    assert ring.primary_version == 3
    assert {v: ring.key(v) for v in ring.versions} == keys


def test_dump_parses_back_to_the_same_ring() -> None:
    ring = ring_of(1, 4, 7)

    again = MasterKeyRing.parse(ring.dump(), source="dump")

    assert again.versions == ring.versions
    assert again.primary_version == 7
    assert all(again.key(v) == ring.key(v) for v in ring.versions)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "BYOKBOT_MASTER_KEY: master key is missing or empty"),
        ("   \n# only a comment\n", "BYOKBOT_MASTER_KEY: master key is missing or empty"),
        (b64(b"s" * 16), "BYOKBOT_MASTER_KEY: master key v1 must be 32 bytes of base64 (got 16)"),
        (b64(b"l" * 48), "BYOKBOT_MASTER_KEY: master key v1 must be 32 bytes of base64 (got 48)"),
        ("not*base64!" * 4, "BYOKBOT_MASTER_KEY: master key v1 is not valid base64"),
        (f"v1:{b64(b'a' * 32)}\nv2:{b64(b'b' * 16)}", "master key v2 must be 32 bytes"),
        (f"v1:{b64(b'a' * 32)}\nv1:{b64(b'b' * 32)}", "master key v1 appears twice"),
        (f"v1:{b64(b'a' * 32)}\n{b64(b'b' * 32)}", "entry 2 is not of the form v<N>:<base64>"),
        (f"v0:{b64(b'a' * 32)}", "master key version 0 is out of range"),
        ("v1:", "master key v1 is empty"),
    ],
)
def test_malformed_master_keys_give_clear_messages(text: str, message: str) -> None:
    with pytest.raises(MasterKeyError) as caught:
        MasterKeyRing.parse(text, source="BYOKBOT_MASTER_KEY")

    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    for fragment in text.replace(",", "\n").splitlines():
        body = fragment.split(":", 1)[-1].strip()
        if len(body) >= 8:
            assert body not in str(caught.value)


def test_ring_constructor_validates() -> None:
    with pytest.raises(MasterKeyError):
        MasterKeyRing({}, primary=1)
    with pytest.raises(MasterKeyError):
        MasterKeyRing({1: b"short"}, primary=1)
    with pytest.raises(MasterKeyError):
        MasterKeyRing({0: os.urandom(32)}, primary=0)
    with pytest.raises(MasterKeyError):
        MasterKeyRing({1: os.urandom(32)}, primary=2)


def test_ring_repr_hides_key_bytes() -> None:
    raw = os.urandom(32)
    ring = MasterKeyRing({1: raw}, primary=1)

    assert repr(ring) == "MasterKeyRing(versions=(1,), primary=1)"
    assert b64(raw) not in repr(ring)
    assert raw.hex() not in repr(ring)
    with pytest.raises(TypeError):
        pickle.dumps(ring)


def test_with_new_primary_adds_the_next_version() -> None:
    ring = ring_of(1, 3)

    grown, version = ring.with_new_primary()

    assert version == 4
    assert grown.versions == (1, 3, 4)
    assert grown.primary_version == 4
    assert grown.key(1) == ring.key(1)
    assert ring.versions == (1, 3)


def test_load_prefers_the_environment_even_when_empty(tmp_path: Path) -> None:
    raw = os.urandom(32)
    key_file = tmp_path / "master.key"

    ring = MasterKeyRing.load(env_value=b64(raw), file=key_file, create=True)
    assert ring.key(1) == raw
    assert not key_file.exists()

    with pytest.raises(MasterKeyError, match="BYOKBOT_MASTER_KEY: master key is missing or empty"):
        MasterKeyRing.load(env_value="", file=key_file, create=True)
    assert not key_file.exists()


def test_load_creates_a_0600_key_file_and_reads_it_back(tmp_path: Path) -> None:
    key_file = tmp_path / "data" / "master.key"

    created = MasterKeyRing.load(env_value=None, file=key_file, create=True)
    loaded = MasterKeyRing.load(env_value=None, file=key_file, create=False)

    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().startswith("v1:")
    assert loaded.versions == (1,)
    assert loaded.key(1) == created.key(1)


def test_load_missing_file_without_create_fails(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"

    with pytest.raises(MasterKeyError, match="master key file not found"):
        MasterKeyRing.load(env_value=None, file=key_file, create=False)


def test_load_refuses_a_group_or_world_readable_file(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    text = f"v1:{b64(os.urandom(32))}\n"
    key_file.write_text(text)
    key_file.chmod(0o644)

    with pytest.raises(MasterKeyError) as caught:
        MasterKeyRing.load(env_value=None, file=key_file, create=True)

    assert "must be mode 0600 (is 0644)" in str(caught.value)
    assert text.strip()[3:] not in str(caught.value)


def test_load_reports_a_malformed_file_by_path(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    key_file.write_text(b64(os.urandom(16)))
    key_file.chmod(0o600)

    with pytest.raises(MasterKeyError, match=r"master\.key: master key v1 must be 32 bytes"):
        MasterKeyRing.load(env_value=None, file=key_file, create=False)


def test_write_file_replaces_atomically_with_mode_0600(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    ring = MasterKeyRing.load(env_value=None, file=key_file, create=True)
    grown, _ = ring.with_new_primary()

    MasterKeyRing.write_file(key_file, grown)

    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["master.key"]
    loaded = MasterKeyRing.load(env_value=None, file=key_file, create=False)
    assert loaded.versions == (1, 2)
    assert loaded.primary_version == 2
    assert loaded.key(2) == grown.key(2)


def test_load_names_a_configured_environment_variable(tmp_path: Path) -> None:
    with pytest.raises(MasterKeyError, match=r"^MY_MASTER_KEY: master key is missing or empty$"):
        MasterKeyRing.load(
            env_value=" ", file=tmp_path / "k", create=True, env_name="MY_MASTER_KEY"
        )


def test_load_refuses_a_directory(tmp_path: Path) -> None:
    (tmp_path / "master.key").mkdir()

    with pytest.raises(MasterKeyError, match="not a regular file"):
        MasterKeyRing.load(env_value=None, file=tmp_path / "master.key", create=True)


def test_load_never_overwrites_an_empty_existing_file(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    key_file.touch(mode=0o600)

    with pytest.raises(MasterKeyError, match="master key is missing or empty"):
        MasterKeyRing.load(env_value=None, file=key_file, create=True)
    assert key_file.read_text() == ""


def test_load_reports_a_binary_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    key_file.write_bytes(os.urandom(8) + b"\xff\xfe")
    key_file.chmod(0o600)

    with pytest.raises(MasterKeyError, match="master key file is not text"):
        MasterKeyRing.load(env_value=None, file=key_file, create=False)
