from __future__ import annotations

import pytest

from mailsync.credentials import CredentialKeyError, DecryptionError, Keyring, generate_key


def test_round_trip_and_owner_binding() -> None:
    ring = Keyring.from_spec(f"k1:{generate_key()}")
    secret = ring.encrypt("hunter2", "t1:i1:imap")
    assert "hunter2" not in secret.model_dump_json() and "hunter2" not in repr(secret)
    assert ring.decrypt(secret, "t1:i1:imap") == "hunter2"
    with pytest.raises(DecryptionError):
        ring.decrypt(secret, "t1:i2:imap")  # copied onto another inbox


def test_rotation_keeps_old_ids_readable() -> None:
    old_key, new_key = generate_key(), generate_key()
    old = Keyring.from_spec(f"k1:{old_key}")
    secret = old.encrypt("pw", "o")
    both = Keyring.from_spec(f"k1:{old_key},k2:{new_key}", primary="k2")
    assert both.needs_rotation(secret)
    rotated = both.rotate(secret, "o")
    assert rotated.key_id == "k2" and both.decrypt(rotated, "o") == "pw"
    assert not both.needs_rotation(rotated)
    with pytest.raises(CredentialKeyError, match="unknown key id"):
        Keyring.from_spec(f"k2:{new_key}").decrypt(secret, "o")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "no credential encryption key"),
        ("k1", "key_id:base64key"),
        ("k1:!!!", "base64"),
        ("k1:AAAA", "32 bytes"),
    ],
)
def test_bad_key_configuration_is_a_clear_error(spec: str, message: str) -> None:
    with pytest.raises(CredentialKeyError, match=message):
        Keyring.from_spec(spec)


def test_wrong_key_does_not_decrypt() -> None:
    secret = Keyring.from_spec(f"k1:{generate_key()}").encrypt("pw", "o")
    with pytest.raises(DecryptionError):
        Keyring.from_spec(f"k1:{generate_key()}").decrypt(secret, "o")
