"""Encryption at rest and pseudonymous look-up.

Message text, triage reasons (they quote the text) and platform user ids are stored encrypted with
Fernet (``cryptography``). Contacts are found by a keyed hash (HMAC-SHA256) of the platform id, so the
database alone never says who wrote.

Rotation: put a new key first in ``TSUNAGI_DATA_KEY`` (``new,old``), run ``tsunagi rotate-keys``
(re-encrypts every row and re-hashes every contact with the new key), then drop the old key.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class DecryptError(Exception):
    """Stored data could not be decrypted with any of the configured keys."""


class Crypto:
    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("at least one data key is needed")
        self._fernet = MultiFernet([Fernet(k) for k in keys])
        # The look-up key is derived from the primary key, never used for encryption itself.
        self._lookup_key = hmac.new(keys[0], b"tsunagi contact lookup v1", hashlib.sha256).digest()

    def encrypt(self, text: str) -> str:
        return self._fernet.encrypt(text.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except InvalidToken as e:
            raise DecryptError("stored data does not decrypt with the configured TSUNAGI_DATA_KEY") from e

    def encrypt_bytes(self, data: bytes) -> str:
        """Bytes (a picture) as a Fernet token, stored and rotated like text."""
        return self._fernet.encrypt(data).decode("ascii")

    def decrypt_bytes(self, token: str) -> bytes:
        try:
            return self._fernet.decrypt(token.encode("ascii"))
        except InvalidToken as e:
            raise DecryptError("stored data does not decrypt with the configured TSUNAGI_DATA_KEY") from e

    def rotate(self, token: str) -> str:
        """Re-encrypt with the primary key."""
        return self._fernet.rotate(token.encode("ascii")).decode("ascii")

    def lookup(self, channel: str, user_id: str) -> str:
        msg = f"{channel}\x00{user_id}".encode()
        return hmac.new(self._lookup_key, msg, hashlib.sha256).hexdigest()
