"""API key material: generation, hashing and the visible prefix. Pure functions.

Keys are 32 random bytes (base62, 43 characters) behind an `rk_` prefix. With that much
entropy a plain SHA-256 digest is the right storage (as for Stripe or GitHub tokens): a
slow password hash would only cost time on the hot path without adding safety.
"""

import hashlib
import secrets
import string

KEY_PREFIX = "rk_"
VISIBLE_PREFIX_LENGTH = 10
_ALPHABET = string.ascii_letters + string.digits


def api_key_generate() -> str:
    body = "".join(secrets.choice(_ALPHABET) for _ in range(43))
    return KEY_PREFIX + body


def api_key_hash(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def api_key_visible_prefix(raw_key: str) -> str:
    return raw_key[:VISIBLE_PREFIX_LENGTH]
