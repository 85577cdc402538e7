"""Mail passwords and OAuth tokens at rest: AES-256-GCM under a keyring, with the key id stored beside
each ciphertext so keys can be rotated without downtime (old ids stay readable until re-encrypted).

Keys come from `MAILSYNC_CREDENTIALS_KEYS` (`kid:base64key[,kid:base64key…]`) or from the file named by
`MAILSYNC_CREDENTIALS_KEYS_FILE` (same format, e.g. a mounted Kubernetes secret);
`MAILSYNC_CREDENTIALS_PRIMARY_KEY_ID` picks the key new ciphertexts use (default: the first one).
The associated data binds a ciphertext to its owner (e.g. `tenant:inbox:imap_password`), so a
ciphertext copied onto another inbox does not decrypt.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, ConfigDict, Field


class CredentialKeyError(RuntimeError):
    """Missing, malformed or unknown key: a start-up or configuration error, never shows key material."""


class DecryptionError(RuntimeError):
    """The ciphertext does not open under its key (wrong key, tampering, or another owner)."""


class EncryptedSecret(BaseModel):
    """What is stored instead of a secret."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key_id: str = Field(min_length=1)
    nonce: str = Field(description="base64, 12 bytes")
    ciphertext: str = Field(description="base64, AES-GCM output including the tag")

    def __repr__(self) -> str:  # never print even the ciphertext in logs
        return f"EncryptedSecret(key_id={self.key_id!r})"

    __str__ = __repr__


def generate_key() -> str:
    """A new random 256-bit key, base64, for `MAILSYNC_CREDENTIALS_KEYS`."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


def _parse(spec: str) -> dict[str, bytes]:
    keys: dict[str, bytes] = {}
    for n, item in enumerate(p.strip() for p in spec.replace("\n", ",").split(",")):
        if not item:
            continue
        kid, sep, b64 = item.partition(":")
        if not sep or not kid:
            raise CredentialKeyError(f"credential key #{n + 1} is not `key_id:base64key`")
        try:
            key = base64.b64decode(b64, validate=True)
        except binascii.Error:
            raise CredentialKeyError(f"credential key {kid!r} is not valid base64") from None
        if len(key) != 32:
            raise CredentialKeyError(f"credential key {kid!r} must be 32 bytes (256 bit), got {len(key)}")
        keys[kid] = key
    return keys


@dataclass(frozen=True)
class Keyring:
    keys: dict[str, bytes]
    primary: str

    @classmethod
    def from_spec(cls, spec: str, primary: str | None = None) -> Keyring:
        keys = _parse(spec)
        if not keys:
            raise CredentialKeyError(
                "no credential encryption key: set MAILSYNC_CREDENTIALS_KEYS=kid:base64key "
                "(generate one with `mailsync keys generate`) or MAILSYNC_CREDENTIALS_KEYS_FILE"
            )
        primary = primary or next(iter(keys))
        if primary not in keys:
            raise CredentialKeyError(f"MAILSYNC_CREDENTIALS_PRIMARY_KEY_ID={primary!r} is not among the keys")
        return cls(keys, primary)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Keyring:
        env = dict(os.environ) if env is None else env
        spec = env.get("MAILSYNC_CREDENTIALS_KEYS", "")
        path = env.get("MAILSYNC_CREDENTIALS_KEYS_FILE")
        if path:
            try:
                spec = ",".join(filter(None, [spec, Path(path).read_text()]))
            except OSError as exc:
                raise CredentialKeyError(
                    f"cannot read MAILSYNC_CREDENTIALS_KEYS_FILE {path}: {exc.strerror}"
                ) from None
        return cls.from_spec(spec, env.get("MAILSYNC_CREDENTIALS_PRIMARY_KEY_ID") or None)

    def __repr__(self) -> str:
        return f"Keyring(key_ids={sorted(self.keys)}, primary={self.primary!r})"

    def encrypt(self, plaintext: str, owner: str) -> EncryptedSecret:
        nonce = secrets.token_bytes(12)
        ct = AESGCM(self.keys[self.primary]).encrypt(nonce, plaintext.encode(), owner.encode())
        return EncryptedSecret(
            key_id=self.primary,
            nonce=base64.b64encode(nonce).decode(),
            ciphertext=base64.b64encode(ct).decode(),
        )

    def decrypt(self, secret: EncryptedSecret, owner: str) -> str:
        key = self.keys.get(secret.key_id)
        if key is None:
            raise CredentialKeyError(f"credential encrypted under unknown key id {secret.key_id!r}")
        try:
            nonce, ct = base64.b64decode(secret.nonce), base64.b64decode(secret.ciphertext)
            return AESGCM(key).decrypt(nonce, ct, owner.encode()).decode()
        except (InvalidTag, binascii.Error, ValueError):
            raise DecryptionError(
                f"credential of {owner!r} does not decrypt under key {secret.key_id!r}"
            ) from None

    def needs_rotation(self, secret: EncryptedSecret) -> bool:
        return secret.key_id != self.primary

    def rotate(self, secret: EncryptedSecret, owner: str) -> EncryptedSecret:
        """Re-encrypt under the primary key (no-op when already there)."""
        return self.encrypt(self.decrypt(secret, owner), owner) if self.needs_rotation(secret) else secret
