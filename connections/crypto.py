"""Encryption of secrets at rest with cryptography's MultiFernet (keys can rotate).

DOCKERSUPPORT_ENCRYPTION_KEY holds one or more Fernet keys, comma-separated, newest first.
"""

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

GENERATE_HINT = (
    'generate one with: python -c "from cryptography.fernet import Fernet; '
    'print(Fernet.generate_key().decode())"'
)


class SecretDecryptionError(Exception):
    """A stored secret cannot be read with the configured keys."""


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise ImproperlyConfigured(f"DOCKERSUPPORT_ENCRYPTION_KEY is not set; {GENERATE_HINT}")
    fernets = []
    for position, key in enumerate(keys, start=1):
        try:
            fernets.append(Fernet(key.strip().encode()))
        except (ValueError, TypeError):
            raise ImproperlyConfigured(
                f"DOCKERSUPPORT_ENCRYPTION_KEY: key {position} is not a valid Fernet key "
                f"(32 url-safe base64-encoded bytes); {GENERATE_HINT}"
            ) from None
    return MultiFernet(fernets)


def get_fernet() -> MultiFernet:
    return _fernet(tuple(k for k in settings.DOCKERSUPPORT_ENCRYPTION_KEY if k.strip()))


def encrypt(plaintext: str) -> str:
    return get_fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return get_fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise SecretDecryptionError(
            "a stored secret cannot be decrypted: DOCKERSUPPORT_ENCRYPTION_KEY does not hold the key "
            "it was encrypted with (after a key change, list the new key first and the old one after it)"
        ) from None


def check_key() -> None:
    """Raises ImproperlyConfigured when the configured keys are missing or malformed."""
    get_fernet()
