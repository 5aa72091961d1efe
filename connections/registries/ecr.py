"""Amazon ECR through boto3 (STS AssumeRole when asked): authorization tokens, cached per connection,
and EcrRegistry (EcrPublicRegistry for Amazon ECR Public), the session `open_registry` gives for an ECR
connection. ECR Public (`ecr-public`) answers in us-east-1 alone, whatever the connection's region.

GetAuthorizationToken is throttled (about 20 calls a second per account) and its tokens live 12
hours, so a token is shared by every process through the Django cache (Redis in production),
encrypted, and reused until REUSE_MARGIN before it expires. A token whose expiry is missing or
already inside that margin is never cached.
"""

import base64
import hashlib
import json
import re
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.parsers import ResponseParserError
from django.core.cache import cache

from connections import crypto, validators
from connections.models import Connection
from connections.validators import forbidden_address, forbidden_address_message

from .base import (
    REUSE_MARGIN,
    Deletion,
    ImageRef,
    RefusedByRegistry,
    Registry,
    RegistryCredentials,
    RegistryError,
    TransientRegistryError,
)

ECR_PUBLIC_REGION = "us-east-1"  # the only region where ecr-public's API (and its tokens) are served
_BOTO_CONFIG = Config(retries={"mode": "standard", "max_attempts": 4}, connect_timeout=10, read_timeout=30)
_SESSION_NAME_RE = re.compile(r"[^\w+=,.@-]")


def token_is_reusable(expires_at: datetime | None, now: datetime | None = None,
                      margin: timedelta = REUSE_MARGIN) -> bool:
    """A token is used until `margin` before it expires; without an expiry, never reused."""
    if expires_at is None:
        return False
    return expires_at - margin > (now or datetime.now(timezone.utc))


def cache_key(connection: Connection) -> str:
    # Everything that decides which identity asks for the token: not just the access key. The secret key too, so
    # that a wrong one typed in a connection test is never answered from a token the right one obtained (the key
    # is a SHA-256 of it all: a 40-character random AWS secret cannot be found from it).
    material = json.dumps([
        connection.pk, connection.region, connection.registry_id, connection.registry, connection.credentials,
        connection.access_key_id, connection.role_arn, connection.external_id, connection.endpoint_url,
        connection.secret_access_key, connection.repository_type,
    ])
    return "dockersupport:ecr-token:" + hashlib.sha256(material.encode()).hexdigest()


def role_session_name(name: str) -> str:
    """STS allows 2-64 characters of [\\w+=,.@-]."""
    return (_SESSION_NAME_RE.sub("-", name) or "dockersupport")[:64].ljust(2, "-")


def ecr_credentials(connection: Connection, *, session_name: str,
                    valid_for: timedelta = REUSE_MARGIN) -> RegistryCredentials:
    """A token valid for at least `valid_for` more: from the cache when it has one, else from AWS."""
    problems = connection.default_chain_problems()  # checked on save too; this holds for any row
    if problems:
        raise RegistryError(f"connection '{connection}': " + "; ".join(problems.values()))
    key = cache_key(connection)
    cached = _cache_get(key)
    if cached is not None and token_is_reusable(cached.expires_at, margin=max(valid_for, REUSE_MARGIN)):
        return cached
    credentials = fetch_token(connection, session_name=session_name)
    _cache_put(key, credentials)
    return credentials


def aws_session(connection: Connection, *, session_name: str, details: list | None = None):
    """A boto3 session with the connection's identity: its keys, the default chain, or an assumed role."""
    session = _base_session(connection)
    if connection.credentials != Connection.Credentials.TEMPORARY:
        return session
    params = {"RoleArn": connection.role_arn, "RoleSessionName": role_session_name(session_name)}
    if connection.external_id.strip():
        params["ExternalId"] = connection.external_id  # a blank one is left out, never sent empty
    answer = session.client("sts", **_client_args(connection)).assume_role(**params)
    temporary = answer["Credentials"]
    if details is not None:
        details.append(f"assumed role {answer['AssumedRoleUser']['Arn']}")
    return boto3.session.Session(
        aws_access_key_id=temporary["AccessKeyId"],
        aws_secret_access_key=temporary["SecretAccessKey"],
        aws_session_token=temporary["SessionToken"],
        region_name=connection.region,
    )


def ecr_client(session, connection: Connection):
    """The repository API of the connection's kind: `ecr` in its region, or `ecr-public` in us-east-1 (the
    endpoint URL, when set, stands for either)."""
    if connection.is_ecr_public:
        return session.client("ecr-public", region_name=ECR_PUBLIC_REGION, **_client_args(connection))
    return session.client("ecr", **_client_args(connection))


def _registry_args(connection: Connection) -> dict:
    """registryId: always for private ECR; for ECR Public only when set (else the caller's own registry)."""
    return {"registryId": connection.registry_id} if connection.registry_id else {}


def _client_args(connection: Connection) -> dict:
    args = {"config": _BOTO_CONFIG}
    if connection.endpoint_url:
        _check_endpoint(connection.endpoint_url)
        args["endpoint_url"] = connection.endpoint_url
    return args


def _check_endpoint(url: str) -> None:
    """An endpoint whose name resolves to a cloud-metadata or link-local address is refused."""
    host = urlsplit(url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except OSError:
        return  # unresolvable: botocore says so in its own words
    if any(forbidden_address(address) for address in addresses | {host}):
        raise RegistryError(forbidden_address_message(url, "an endpoint URL"))


# AWS's answers that mean "not with these credentials" (another connection may be allowed), and those
# worth asking again later, besides any 401/403 and any 5xx/429.
_REFUSED_CODES = {"AccessDenied", "AccessDeniedException", "UnrecognizedClientException", "InvalidClientTokenId",
                  "InvalidSignatureException", "SignatureDoesNotMatch", "ExpiredToken", "ExpiredTokenException"}
_TRANSIENT_CODES = {"Throttling", "ThrottlingException", "TooManyRequestsException", "RequestLimitExceeded",
                    "ServiceUnavailable", "ServiceUnavailableException", "InternalFailure", "ServerException"}


@contextmanager
def aws_errors(connection: Connection):
    """Turns botocore's errors into RegistryError quoting AWS, without secrets: RefusedByRegistry when these
    credentials may not, TransientRegistryError when AWS cannot be reached or asks to come back later."""
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
        text = str(error.get("Message", ""))
        if connection.endpoint_url and not validators.is_aws_host(urlsplit(connection.endpoint_url).hostname or ""):
            # botocore puts a body it cannot parse into the message: another host's page is not quoted.
            text = f"HTTP {status}".strip()
        code = str(error.get("Code", "error"))
        message = _scrub(f"AWS {exc.operation_name} failed: {code[:100]}: {_cut(text)}".rstrip(": "), connection)
        raise _client_error_kind(code, status)(message) from None
    except (BotoConnectionError, HTTPClientError) as exc:
        raise TransientRegistryError(_scrub(f"AWS could not be asked: {_cut(str(exc))}", connection)) from None
    except BotoCoreError as exc:
        raise RegistryError(_scrub(f"AWS could not be asked: {_cut(str(exc))}", connection)) from None
    except ResponseParserError:
        # Not AWS's answer (an empty or HTML body from a proxy or another host): its body is not quoted.
        raise RegistryError(f"{connection.endpoint_url or 'AWS'} answered with something that is not an AWS "
                            "answer") from None


def _client_error_kind(code: str, status) -> type[RegistryError]:
    if code in _REFUSED_CODES or status in (401, 403):
        return RefusedByRegistry
    if code in _TRANSIENT_CODES or status == 429 or (isinstance(status, int) and status >= 500):
        return TransientRegistryError
    return RegistryError


def fetch_token(connection: Connection, *, session_name: str) -> RegistryCredentials:
    """Asks AWS for a fresh token; raises RegistryError with AWS's answer and no secret."""
    details: list[str] = []
    with aws_errors(connection):
        session = aws_session(connection, session_name=session_name, details=details)
        client = ecr_client(session, connection)
        if connection.is_ecr_public:  # one token for the whole public registry: no registry IDs to name
            data = client.get_authorization_token()["authorizationData"]
        else:
            data = client.get_authorization_token(registryIds=[connection.registry_id])["authorizationData"][0]
    username, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    expires_at = data.get("expiresAt")
    whose = (f"{connection.registry_address} (ecr-public, {ECR_PUBLIC_REGION})" if connection.is_ecr_public
             else f"registry {connection.registry_id}")
    details.append(f"token for {whose} expires {expires_at:%Y-%m-%d %H:%M:%S %Z}"
                   if expires_at else f"token for {whose} without expiry")
    return RegistryCredentials(
        server=connection.registry_address, username=username, password=password, expires_at=expires_at,
        detail="; ".join(details),
    )


BATCH_DELETE_LIMIT = 100  # BatchDeleteImage takes at most 100 image ids (moto does not enforce it)


class EcrRegistry(Registry):
    """An ECR registry: logins with a token (its own cache), the repository API through boto3.

    BatchDeleteImage removes a tag alone when asked by tag; the image stays for its other tags.
    The AWS client (and its AssumeRole) is made at the first API call: a login test needs none.
    """

    deletes_by_tag = True

    def __init__(self, connection: Connection, address: str, *, session_name: str):
        self.connection, self.address, self.session_name = connection, address, session_name
        self._ecr = None

    def _client(self):
        if self._ecr is None:
            with aws_errors(self.connection):
                self._ecr = ecr_client(aws_session(self.connection, session_name=self.session_name), self.connection)
        return self._ecr

    def check_login(self) -> Iterator[str]:
        """The token (role, expiry), then the registry's /v2/ accepting it."""
        from .v2_registry import V2Registry  # requests is only needed here

        credentials = ecr_credentials(self.connection, session_name=self.session_name)
        if credentials.detail:
            yield credentials.detail
        with V2Registry(self.address, credentials) as registry:
            yield from registry.check_login()

    def tags_by_digest(self, repository: str) -> dict[str, set[str]]:
        result: dict[str, set[str]] = {}
        client = self._client()
        with aws_errors(self.connection):
            pages = client.get_paginator("list_images").paginate(
                registryId=self.connection.registry_id, repositoryName=repository)
            for page in pages:
                for image in page.get("imageIds", []):
                    tags = result.setdefault(image["imageDigest"], set())
                    if image.get("imageTag"):
                        tags.add(image["imageTag"])
        return result

    def _api_name(self, repository: str) -> str:
        """The repository's name in the API's requests."""
        return repository

    def _image_detail(self, repository: str, image_id: dict) -> dict | None:
        """DescribeImages of one image (`{"imageTag": ...}` or `{"imageDigest": ...}`); None when there is none."""
        client = self._client()
        with aws_errors(self.connection):
            try:
                answer = client.describe_images(**_registry_args(self.connection),
                                                repositoryName=self._api_name(repository), imageIds=[image_id])
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "ImageNotFoundException":
                    return None
                raise
        # The one asked for, not whatever came first: a listing that ignored the filter names no other image.
        wanted_digest, wanted_tag = image_id.get("imageDigest"), image_id.get("imageTag")
        for detail in answer.get("imageDetails") or []:
            if (detail.get("imageDigest") == wanted_digest if wanted_digest
                    else wanted_tag in (detail.get("imageTags") or ())):
                return detail
        return None

    def digest_of(self, repository: str, tag: str) -> str | None:
        detail = self._image_detail(repository, {"imageTag": tag})
        return detail.get("imageDigest") if detail else None

    def holds(self, repository: str, digest: str) -> bool:
        return self._image_detail(repository, {"imageDigest": digest}) is not None

    def pushed_at(self, repository: str, digest: str) -> datetime | None:
        """ECR's imagePushedAt: when the repository first had the image (a push of the same digest again keeps it)."""
        detail = self._image_detail(repository, {"imageDigest": digest})
        pushed = detail.get("imagePushedAt") if detail else None
        return pushed if isinstance(pushed, datetime) else None

    def delete(self, repository: str, images: Iterable[ImageRef]) -> dict[ImageRef, Deletion]:
        """BatchDeleteImage in chunks of at most 100; ECR's answer per image id becomes a Deletion."""
        pending = {_id_key(image): image for image in dict.fromkeys(images)}
        requests = [{"imageTag": key[1]} if key[0] == "tag" else {"imageDigest": key[1]} for key in pending]
        deleted, failures = [], []
        for start in range(0, len(requests), BATCH_DELETE_LIMIT):
            chunk = requests[start:start + BATCH_DELETE_LIMIT]
            with aws_errors(self.connection):
                answer = self._client().batch_delete_image(
                    **_registry_args(self.connection), repositoryName=repository, imageIds=chunk)
            deleted.extend(answer.get("imageIds", []))
            failures.extend(answer.get("failures", []))
        outcomes: dict[ImageRef, Deletion] = {}
        for image_id in deleted:
            for key in _answer_keys(image_id):
                if key in pending:
                    image = pending.pop(key)
                    outcomes[image] = Deletion.deleted(f"tag '{image.tag}' removed" if image.by_tag
                                                       else "image deleted")
        for failure in failures:
            code, reason = failure.get("failureCode", ""), failure.get("failureReason", "")
            for key in _answer_keys(failure.get("imageId", {})):
                if key in pending:
                    outcomes[pending.pop(key)] = _failure_outcome(code, reason)
        for image in pending.values():
            outcomes[image] = Deletion.failed("ECR answered nothing about this image")
        return outcomes


class EcrPublicRegistry(EcrRegistry):
    """Amazon ECR Public (public.ecr.aws) through `ecr-public` in us-east-1: the same deletions and answers as
    EcrRegistry (BatchDeleteImage, by digest or one tag alone), the tags read with DescribeImages (it has no
    ListImages). Its login test stops at the token: the server itself never calls public.ecr.aws.

    Images are named `public.ecr.aws/<alias>/<repository>` and the API knows the repository alone: the alias must
    be one of the connection's registry's (DescribeRegistries), else another account's repository of the same
    name would be the one asked."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._aliases: set[str] | None = None

    def check_login(self) -> Iterator[str]:
        credentials = ecr_credentials(self.connection, session_name=self.session_name)
        yield credentials.detail or f"ecr-public gave a token for {credentials.server}"

    def _repository_name(self, repository: str) -> str:
        """'<alias>/<name>' → '<name>' when the alias is this registry's; RefusedByRegistry otherwise."""
        alias, _, name = repository.partition("/")
        if self._aliases is None:
            aliases: set[str] = set()
            with aws_errors(self.connection):
                for page in self._client().get_paginator("describe_registries").paginate():
                    for registry in page.get("registries", []):
                        if registry.get("registryId") == (self.connection.registry_id or registry.get("registryId")):
                            aliases.update(item["name"] for item in registry.get("aliases", []) if item.get("name"))
            self._aliases = aliases
        if not name or alias not in self._aliases:
            owned = ", ".join(sorted(self._aliases)) or "none"
            raise RefusedByRegistry(f"'{alias}' is not an alias of this connection's ECR Public registry (its aliases: "
                                    f"{owned}): its repository '{name or repository}' is another registry's")
        return name

    def _api_name(self, repository: str) -> str:
        return self._repository_name(repository)

    def delete(self, repository: str, images: Iterable[ImageRef]) -> dict[ImageRef, Deletion]:
        return super().delete(self._repository_name(repository), images)

    def tags_by_digest(self, repository: str) -> dict[str, set[str]]:
        result: dict[str, set[str]] = {}
        name = self._repository_name(repository)
        client = self._client()
        with aws_errors(self.connection):
            pages = client.get_paginator("describe_images").paginate(
                **_registry_args(self.connection), repositoryName=name)
            for page in pages:
                for image in page.get("imageDetails", []):
                    result.setdefault(image["imageDigest"], set()).update(image.get("imageTags") or ())
        return result


def _failure_outcome(code: str, reason: str) -> Deletion:
    if code == "ImageNotFound":
        return Deletion.gone(f"already gone ({code})")
    if code == "ImageReferencedByManifestList":
        return Deletion.kept(f"{code}: {reason}")
    return Deletion.failed(f"ECR BatchDeleteImage: {code}: {reason}")


def _id_key(image: ImageRef) -> tuple[str, str]:
    return ("tag", image.tag) if image.by_tag else ("digest", image.digest)


def _answer_keys(image_id: dict) -> list[tuple[str, str]]:
    """An image id in ECR's answer names the digest, the tag, or both: each may be what was asked."""
    keys = []
    if image_id.get("imageDigest"):
        keys.append(("digest", image_id["imageDigest"]))
    if image_id.get("imageTag"):
        keys.append(("tag", image_id["imageTag"]))
    return keys


def _base_session(connection: Connection):
    if connection.credentials == Connection.Credentials.DEFAULT_CHAIN:
        return boto3.session.Session(region_name=connection.region)
    return boto3.session.Session(
        aws_access_key_id=connection.access_key_id,
        aws_secret_access_key=connection.secret_access_key,
        region_name=connection.region,
    )


def _cut(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def _scrub(message: str, connection: Connection) -> str:
    for secret in (connection.secret_access_key, connection.external_id):
        if secret:
            message = message.replace(secret, "***")
    return message


def _cache_get(key: str) -> RegistryCredentials | None:
    token = cache.get(key)
    if token is None:
        return None
    try:
        data = json.loads(crypto.decrypt(token))
    except (crypto.SecretDecryptionError, ValueError):
        return None  # written with another key: ask AWS again
    credentials = RegistryCredentials(
        server=data["server"], username=data["username"], password=data["password"],
        expires_at=datetime.fromisoformat(data["expires_at"]), detail=data["detail"] + " (cached)",
    )
    return credentials if token_is_reusable(credentials.expires_at) else None


def _cache_put(key: str, credentials: RegistryCredentials) -> None:
    if not token_is_reusable(credentials.expires_at):
        return
    lifetime = credentials.expires_at - REUSE_MARGIN - datetime.now(timezone.utc)
    payload = json.dumps({
        "server": credentials.server, "username": credentials.username, "password": credentials.password,
        "expires_at": credentials.expires_at.isoformat(), "detail": credentials.detail,
    })
    cache.set(key, crypto.encrypt(payload), timeout=max(1, int(lifetime.total_seconds())))
