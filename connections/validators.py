"""Validation of connection fields; each message names what is wrong and how it should look."""

import ipaddress
import re
import socket
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError

from agent.references import registry_identity

_HOST_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_HOST = rf"(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[[0-9A-Fa-f:.]+\])"
_HOST_PORT_RE = re.compile(rf"^{_HOST}(?::(?P<port>\d{{1,5}}))?$")
_AWS_REGION_RE = re.compile(r"^(?:[a-z]{2}(?:-gov|-iso[a-z]*)?)-[a-z]+-\d$")
_ROLE_ARN_RE = re.compile(r"^arn:aws(?:-cn|-us-gov|-iso|-iso-b)?:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_REGISTRY_ID_RE = re.compile(r"^\d{12}$")
_ACCESS_KEY_ID_RE = re.compile(r"^[A-Z0-9]{16,128}$")
_NUMERIC_HOST_RE = re.compile(r"^(?:0[xX][0-9a-fA-F]+|[0-9]+)(?:\.(?:0[xX][0-9a-fA-F]+|[0-9]+)){0,3}$")
_AWS_HOST_RE = re.compile(r"(?:^|\.)amazonaws\.com(?:\.cn)?$")
_IDENT_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$")


# Link-local addresses are where clouds serve instance metadata and credentials (169.254.169.254,
# fd00:ec2::254): no registry, endpoint or token service of a connection may point there unless the
# operator allows it (DOCKERSUPPORT_ALLOW_LINK_LOCAL).
FORBIDDEN_NETWORKS = [
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::254/128"),
]


def forbidden_address(address: str) -> bool:
    """True for an IP address (text) in a link-local or cloud-metadata network, unless allowed."""
    if getattr(settings, "DOCKERSUPPORT_ALLOW_LINK_LOCAL", False):
        return False
    address = address.strip("[]").split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        if not _NUMERIC_HOST_RE.match(address):
            return False  # a host name: checked where it is resolved
        try:  # 2852039166, 0xa9fea9fe, 0251.0376.0251.0376: forms of 169.254.169.254 that resolvers accept
            ip = ipaddress.IPv4Address(socket.inet_aton(address))
        except OSError:
            return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in FORBIDDEN_NETWORKS)


def forbidden_address_message(value: str, what: str) -> str:
    return (f"'{value}' is a link-local or cloud-metadata address, refused as {what}; "
            "set DOCKERSUPPORT_ALLOW_LINK_LOCAL=true to allow it")


def registry_host(address: str) -> str:
    """The `host[:port]` of a registry address, as its identity (agent/references.py): empty and Docker
    Hub's aliases are docker.io, a URL loses scheme and path, the host is in lower case."""
    return registry_identity(address)


def validate_registry_address(value: str) -> None:
    if not value:
        return  # Docker Hub
    if "://" in value:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https"):
            raise ValidationError(
                f"'{value}' is not a registry address: a URL must start with http:// or https://"
            )
        netloc = parts.netloc
        if parts.username or parts.password:
            raise ValidationError("a registry address must not carry credentials: use username and password")
        if parts.query or parts.fragment:
            raise ValidationError(f"'{value}' is not a registry address: remove the query or fragment")
    else:
        netloc = value
        if "/" in value:
            raise ValidationError(
                f"'{value}' is not a registry address: give host[:port] or a URL, without a repository path"
            )
    match = _HOST_PORT_RE.match(netloc)
    if not match:
        raise ValidationError(f"'{value}' is not a registry address: expected host[:port] or a URL")
    port = match.group("port")
    if port is not None and not 0 < int(port) < 65536:
        raise ValidationError(f"'{value}' is not a registry address: port {port} is out of range 1-65535")
    if forbidden_address(urlsplit(f"//{netloc}").hostname or ""):
        raise ValidationError(forbidden_address_message(value, "a registry address"))


def validate_aws_region(value: str) -> None:
    if not _AWS_REGION_RE.match(value or ""):
        raise ValidationError(f"'{value}' is not an AWS region name (like eu-west-1 or us-east-2)")


def validate_role_arn(value: str) -> None:
    if value and not _ROLE_ARN_RE.match(value):
        raise ValidationError(
            f"'{value}' is not an IAM role ARN (like arn:aws:iam::123456789012:role/ci-push)"
        )


def validate_registry_id(value: str) -> None:
    if value and not _REGISTRY_ID_RE.match(value):
        raise ValidationError(f"'{value}' is not a registry ID: an AWS account ID is exactly 12 digits")


def validate_access_key_id(value: str) -> None:
    if value and not _ACCESS_KEY_ID_RE.match(value):
        raise ValidationError(
            "not an AWS access key ID: 16 to 128 capital letters and digits (like AKIAIOSFODNN7EXAMPLE)"
        )


def validate_endpoint_url(value: str) -> None:
    if not value:
        return
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValidationError(f"'{value}' is not an endpoint URL: expected http(s)://host[:port]")
    if parts.username or parts.password:
        raise ValidationError("an endpoint URL must not carry credentials")
    if forbidden_address(parts.hostname or ""):
        raise ValidationError(forbidden_address_message(value, "an endpoint URL"))


def validate_ident(value: str) -> None:
    if not _IDENT_RE.match(value or ""):
        raise ValidationError(
            f"'{value}' is not a valid id: use 1-64 lowercase letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )


def is_aws_host(host: str) -> bool:
    """A host name of AWS's own (ECR, STS, VPC endpoints): *.amazonaws.com or *.amazonaws.com.cn."""
    return bool(_AWS_HOST_RE.search(host.lower().rstrip(".")))
