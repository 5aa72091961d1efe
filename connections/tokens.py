"""Bearer tokens of every kind (users' API tokens, agents', builds'): made random, stored as digests.

A token is a long random string, so a fast hash (SHA-256) is enough and a stolen database yields no
usable token. Its prefix says what kind it is (dsu_ user, dsa_ agent, dsb_ build).
"""

import hashlib
import secrets

USER_TOKEN_PREFIX = "dsu_"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(prefix: str) -> tuple[str, str]:
    """(token, its digest): the token is shown once, the digest is stored."""
    token = prefix + secrets.token_urlsafe(32)
    return token, token_digest(token)
