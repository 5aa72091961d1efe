"""Event records made fit to store: texts that fit their columns, without the builds' secrets, and the
identity that tells one event from another.

Records reach ingestion through the agent API, which checks them, but a batch kept by an older
server or sent by an older agent may hold anything: nothing here trusts a record. A record that is
not an operation at all raises RecordError (ingestion sets it aside); the rest is made to fit.

Secrets: a record is masked with the secrets of the builds it names only (`BuildSecrets.of`), never
with those of another build that happened to share its batch: another project's short password
must not rewrite this project's image names, nor show by what it rewrote that it is there.
- Minimum lengths: in names (image, tag, digest, actor and container ids and names, event type, and
  the `image`, `name`, `image_id` attributes) a secret is masked only when it has at least
  NAME_MINIMUM (8) characters: a shorter one ("team", "app", "1") is part of too many references,
  and a masked reference names another image that clean-up must not act on. In free texts (the raw
  action with its command line, the other attributes) it is masked from TEXT_MINIMUM (4)
  characters; shorter ones are not masked anywhere (they would hide nothing and mangle everything).
- Forms: each secret is also masked as it reads JSON-escaped, URL-encoded (`quote` and `quote_plus`,
  upper- and lower-case hex) and in base64 (standard and URL-safe): of the secret alone and of
  `user:secret` (config.json's `auth`), whole, and at each of the three byte offsets it may start at
  inside a longer encoded text (the characters that depend on the secret's bytes alone). An encoded
  form shorter than the field's minimum is not masked.
- All the matches of every form of every secret are masked in one pass, as the union of their
  intervals: overlapping secrets are both masked whole.
- What cannot be caught: a secret split across fields or records, or spelt any other way (other
  case, other encodings, hashed, compressed), is stored as the record has it.
"""

import base64
import json
import logging
import re
from collections.abc import Iterable
from hashlib import sha256
from urllib.parse import quote, quote_plus

from ..models import IDENTITY_FIELDS, Build, DockerOperation, LoginConnection, canonical_json, operation_identity

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
# Operations whose digest (and a pull's image ID) the agent asks the daemon for: not all of their identity.
_ASKED_AFTERWARDS = frozenset({_PUSH, DockerOperation.Action.PULL.value})
NAME_MINIMUM = 8  # characters of a secret masked in a name (see the module's docstring)
TEXT_MINIMUM = 4  # characters of a secret masked in a free text
# Texts that name something (an image, a container, ...): a mask there makes another name.
NAME_FIELDS = frozenset({"event_type", "actor_id", "image", "tag", "digest", "container_id", "container_name"})
NAME_ATTRIBUTES = frozenset({"image", "name", "image_id"})
_HEX_ESCAPE = re.compile(r"%[0-9A-F]{2}")


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


def _base64_inner(data: bytes, offset: int, encode) -> str:
    """The characters of `data`'s base64 when it starts `offset` bytes into what is encoded: those whose six bits
    are all `data`'s, whatever comes before and after it."""
    encoded = encode(b"\0" * offset + data + b"\0\0").decode()
    return encoded[-(-8 * offset // 6):8 * (offset + len(data)) // 6]


def _forms(value: str, *, login: str | None = None) -> set[str]:
    """The ways `value` may be written in a record: as it is, JSON-escaped, URL-encoded, in base64; with `login`,
    only the base64 of `login:value` (config.json's `auth`)."""
    data = (value if login is None else f"{login}:{value}").encode("utf-8", "replace")
    forms = {base64.b64encode(data).decode()}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        forms.update(_base64_inner(data, offset, encode) for offset in range(3))
    if login is None:
        forms.update((value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]))
        for encoded in (quote(value, safe="", errors="replace"), quote(value, errors="replace"),
                        quote_plus(value, safe="", errors="replace"), quote_plus(value, errors="replace")):
            forms.update((encoded, _HEX_ESCAPE.sub(lambda match: match.group().lower(), encoded)))
    return forms


class Secrets:
    """The secrets to mask in records, in every form they are looked for (see the module's docstring).

    `values`: the secrets; `logins`: (username, secret) pairs whose `username:secret` may show in base64.
    """

    def __init__(self, values=(), logins=()):
        self.lengths: dict[str, int] = {}  # form → the length of the (longest) secret it gives away
        self._by_minimum: dict[int, tuple[str, ...]] = {}
        for value in filter(None, values):
            self._add(_forms(value), len(value))
        for username, value in logins:
            if value:
                self._add(_forms(value, login=username), len(value))
        # As the forms read in canonical JSON, to tell quickly whether a record needs masking at all.
        self.encoded = tuple(json.dumps(form)[1:-1] for form in self.forms(TEXT_MINIMUM))

    def _add(self, forms: Iterable[str], length: int) -> None:
        self._by_minimum.clear()
        for form in forms:
            self.lengths[form] = max(length, self.lengths.get(form, 0))

    @classmethod
    def union(cls, many: Iterable["Secrets"]) -> "Secrets":
        secrets = cls()
        for other in many:
            for form, length in other.lengths.items():
                secrets._add((form,), length)
        secrets.encoded = tuple(json.dumps(form)[1:-1] for form in secrets.forms(TEXT_MINIMUM))
        return secrets

    def __bool__(self):
        return bool(self.lengths)

    def forms(self, minimum: int) -> tuple[str, ...]:
        """The forms masked where secrets of at least `minimum` characters are."""
        if minimum not in self._by_minimum:
            self._by_minimum[minimum] = tuple(form for form, length in self.lengths.items()
                                              if length >= minimum and len(form) >= minimum)
        return self._by_minimum[minimum]

    def mask(self, text: str, minimum: int = TEXT_MINIMUM) -> str:
        """`text` with every occurrence of a form of a secret of at least `minimum` characters replaced by MASK;
        overlapping or adjacent occurrences make one MASK."""
        spans = []
        for form in self.forms(minimum):
            start = text.find(form)
            while start != -1:
                spans.append((start, start + len(form)))
                start = text.find(form, start + 1)
        if not spans:
            return text
        spans.sort()
        parts, done = [], 0
        start, end = spans[0]
        for begin, finish in spans[1:]:
            if begin > end:
                parts += [text[done:start], MASK]
                done, start = end, begin
            end = max(end, finish)
        parts += [text[done:start], MASK, text[end:]]
        return "".join(parts)


NO_SECRETS = Secrets()


def value_clean(value, secrets: Secrets = NO_SECRETS, minimum: int = TEXT_MINIMUM):
    """Every text of a JSON value (keys too) cleaned and with each secret of at least `minimum` characters masked."""
    if isinstance(value, str):
        return secrets.mask(text_clean(value), minimum)
    if isinstance(value, dict):
        return {value_clean(str(k), secrets, minimum): value_clean(v, secrets, minimum) for k, v in value.items()}
    if isinstance(value, list):
        return [value_clean(v, secrets, minimum) for v in value]
    return value


def _field_clean(name: str, value, secrets: Secrets):
    if name in NAME_FIELDS:
        return value_clean(value, secrets, NAME_MINIMUM)
    if name == "attributes":
        return {value_clean(str(k), secrets): value_clean(v, secrets, NAME_MINIMUM if k in NAME_ATTRIBUTES
                                                          and isinstance(v, str) else TEXT_MINIMUM)
                for k, v in value.items()}
    return value_clean(value, secrets)


class BuildSecrets:
    """The secrets of each build of a batch; a record is masked with those of the builds it names, only."""

    def __init__(self, by_build: dict[int, Secrets]):
        self.by_build = by_build
        self._unions: dict[frozenset[int], Secrets] = {}

    def of(self, builds: Iterable[int]) -> Secrets:
        """The secrets of these builds (ids), all of them."""
        key = frozenset(build for build in builds if build in self.by_build)
        if key not in self._unions:
            self._unions[key] = (self.by_build[next(iter(key))] if len(key) == 1
                                 else Secrets.union(self.by_build[build] for build in key))
        return self._unions[key]


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
        row = {name: row[name] if name == "action" else _field_clean(name, row[name], secrets)
               for name in IDENTITY_FIELDS}
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
    if encoded and row["action"] not in _ASKED_AFTERWARDS:
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


def _connection_secrets(connection) -> tuple[list[str], list[tuple[str, str]]]:
    """A connection's secrets (password, secret key, external ID, its ECR token while cached) and the
    (username, secret) pairs a Docker client config would hold."""
    values = [getattr(connection, name) for name in connection.SECRET_FIELDS]
    if connection.type == connection.Type.AMAZON_ECR:
        values.append(_ecr_token(connection))
        username = "AWS"
    else:
        username = connection.username
    values = [value for value in values if value]
    return values, [(username, value) for value in values]


def logins_secrets(logins: Iterable[LoginConnection]) -> Secrets:
    """The secrets of these logins (their connections' fetched): passwords, secret keys and external IDs,
    ECR tokens while cached, and each login's `user:password` in base64 (config.json's `auth`)."""
    values, pairs = [], []
    for login in logins:
        more, more_pairs = _connection_secrets(login.connection)
        values += more
        pairs += more_pairs
    return Secrets(values, pairs)


def build_secrets(builds: Iterable[Build], logins: Iterable[LoginConnection]) -> BuildSecrets:
    """Each build's secrets: those of its configuration's logins (their connections' fetched)."""
    by_configuration: dict[int, list[LoginConnection]] = {}
    for login in logins:
        by_configuration.setdefault(login.configuration_id, []).append(login)
    secrets = {configuration: logins_secrets(found) for configuration, found in by_configuration.items()}
    return BuildSecrets({build.pk: secrets.get(build.configuration_id, NO_SECRETS) for build in builds})
