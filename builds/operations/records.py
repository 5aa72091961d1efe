"""Event records made fit to store: texts that fit their columns, without the builds' secrets, and the
identity that tells one event from another.

Records reach ingestion through the agent API, which checks them, but a batch kept by an older
server or sent by an older agent may hold anything: nothing here trusts a record. A record that is
not an operation at all raises RecordError (ingestion sets it aside); the rest is made to fit.
"""

import base64
import json
import logging
from collections.abc import Iterable
from hashlib import sha256

from ..models import IDENTITY_FIELDS, DockerOperation, LoginConnection, canonical_json, operation_identity

log = logging.getLogger(__name__)

MASK = "***"
# A raw action longer than its column (Docker's `exec_start: <the whole command line>`) keeps its
# first RAW_ACTION_KEPT characters in the attributes, under RAW_ACTION_ATTRIBUTE; the column holds
# the first 100. Both without secrets.
RAW_ACTION_KEPT = 1_000
RAW_ACTION_ATTRIBUTE = "dockersupport.raw_action"
TEXT_LIMITS = {name: DockerOperation._meta.get_field(name).max_length for name in (
    "event_type", "action", "raw_action", "actor_id", "image", "tag", "digest", "container_id", "container_name")}
_BIGINT = 2 ** 63
_TEXTS = tuple(TEXT_LIMITS.items())
_ACTIONS = frozenset(DockerOperation.Action.values)
_PUSH = DockerOperation.Action.PUSH.value


class RecordError(ValueError):
    """A record that is not an operation: a field missing or of the wrong kind."""


def text_clean(value: str) -> str:
    """Without NUL characters and lone surrogates, which PostgreSQL refuses in any text."""
    if "\x00" in value:
        value = value.replace("\x00", "")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


class Secrets:
    """The secrets to mask in records, longest first (a secret holding another is masked whole)."""

    def __init__(self, values=()):
        self.values = tuple(sorted(set(filter(None, values)), key=len, reverse=True))
        self.encoded = tuple(json.dumps(value)[1:-1] for value in self.values)  # as they read in canonical JSON

    def __bool__(self):
        return bool(self.values)

    def mask(self, text: str) -> str:
        """`text` with each occurrence of a secret replaced by MASK."""
        for secret in self.values:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


NO_SECRETS = Secrets()


def value_clean(value, secrets: Secrets = NO_SECRETS):
    """Every text of a JSON value (keys too) cleaned and with each secret masked."""
    if isinstance(value, str):
        return secrets.mask(text_clean(value))
    if isinstance(value, dict):
        return {value_clean(str(k), secrets): value_clean(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [value_clean(v, secrets) for v in value]
    return value


def operation_fields(record, secrets: Secrets = NO_SECRETS) -> dict:
    """The stored fields of the operation a record describes, its identity included. Raises RecordError.

    Quick for the common record (one JSON encoding, which is also its identity's): texts are cleaned
    and secrets masked only when its encoding shows a NUL, a lone surrogate or a secret.
    """
    if not isinstance(record, dict):
        raise RecordError("a record is an object")
    get = record.get
    row, cut = {}, set()
    for name, limit in _TEXTS:
        value = row[name] = get(name, "")
        if type(value) is not str:
            raise RecordError(f"{name}: expected a text")
        if len(value) > limit:
            cut.add(name)
    if row["action"] not in _ACTIONS:
        raise RecordError(f"action: '{text_clean(row['action'][:20])}' is not an operation")
    time_nano, exit_code, attributes = get("time_nano"), get("exit_code"), get("attributes", {})
    if type(time_nano) is not int or not 0 < time_nano < _BIGINT:
        raise RecordError("time_nano: expected nanoseconds since the epoch")
    if exit_code is not None and type(exit_code) is not int:
        raise RecordError("exit_code: expected a whole number or null")
    if type(attributes) is not dict:
        raise RecordError("attributes: expected an object")
    row["time_nano"], row["exit_code"], row["attributes"] = time_nano, exit_code, attributes
    encoded = canonical_json([row[name] for name in IDENTITY_FIELDS])
    if "\\u0000" in encoded or "\\ud" in encoded or any(secret in encoded for secret in secrets.encoded):
        # Masked before any cut: a secret cut in two would show its start. The action is one of ours.
        row = {name: row[name] if name == "action" else value_clean(row[name], secrets) for name in IDENTITY_FIELDS}
        cut = {name for name, limit in _TEXTS if len(row[name]) > limit}
        encoded = ""
    if cut:
        if "raw_action" in cut:
            raw = row["raw_action"]
            row["attributes"] = {**row["attributes"], RAW_ACTION_ATTRIBUTE: raw if len(raw) <= RAW_ACTION_KEPT
                                 else raw[:RAW_ACTION_KEPT - 1] + "…"}
        for name in cut:
            row[name] = row[name][:TEXT_LIMITS[name]]
        encoded = ""
    if encoded and row["action"] != _PUSH:
        row["identity"] = sha256(encoded.encode()).hexdigest()
    else:
        row["identity"] = operation_identity(row)
    return row


def _ecr_token(connection) -> str:
    """The ECR token the build logged in with, while the shared cache holds it (it is the latest one)."""
    from connections.registries import ecr  # boto3: only for builds that log in to ECR

    try:
        cached = ecr._cache_get(ecr.cache_key(connection))
    except Exception:  # noqa: BLE001 - a cache away: the token cannot be known, the records are still stored
        log.warning("The ECR token of connection %s could not be read from the cache", connection, exc_info=True)
        return ""
    return cached.password if cached is not None else ""


def logins_secrets(logins: Iterable[LoginConnection]) -> Secrets:
    """The secrets of these logins (their connections' fetched): passwords, secret keys and external IDs,
    ECR tokens while cached, and each login's `user:password` in base64 (config.json's `auth`)."""
    secrets = set()
    for login in logins:
        connection = login.connection
        values = [getattr(connection, name) for name in connection.SECRET_FIELDS]
        if connection.type == connection.Type.AMAZON_ECR:
            values.append(_ecr_token(connection))
            username = "AWS"
        else:
            username = connection.username
        for value in filter(None, values):
            secrets.update((value, base64.b64encode(f"{username}:{value}".encode()).decode()))
    return Secrets(secrets)
