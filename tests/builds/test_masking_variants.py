"""Secrets out of event records, however they are written, and only the secrets of the builds a record names: the
encodings a command line may carry (base64 at any offset, URL-encoding, JSON escapes), overlapping secrets, and
minimum lengths that keep a short password from rewriting image names (builds/operations/records.py)."""

import base64
import json
import re
import time
from urllib.parse import quote, quote_plus

import pytest

from builds.models import DockerOperation, PushedImage, SetAsideRecord
from builds.operations.records import MASK, NAME_MINIMUM, TEXT_MINIMUM, Secrets, operation_fields
from tests.builds.test_ingestion import record, send, start
from tests.factories import BuildConfigurationFactory, LoginConnectionFactory, ProjectFactory

pytestmark = pytest.mark.django_db
PASSWORD = 'S3cr&t/pa ss"w\\rd'
USER = "ci"
REGISTRY = "registry.example.test:5000"


def exec_record(raw_action: str, **attributes) -> dict:
    return {"time_nano": time.time_ns(), "event_type": "container", "action": "exec", "raw_action": raw_action,
            "actor_id": "", "image": "", "tag": "", "digest": "", "container_id": "", "container_name": "",
            "exit_code": None, "attributes": attributes}


def masked(text: str, secrets: Secrets) -> str:
    return operation_fields(exec_record(text), secrets)["raw_action"]


AUTH = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
SECRETS = Secrets([PASSWORD], [(USER, PASSWORD)])


def _inner(encoded_with_prefix: str, prefix: int, length: int) -> str:
    """The characters of a base64 text that come from the `length` bytes after the first `prefix` ones only."""
    return encoded_with_prefix[-(-8 * prefix // 6):8 * (prefix + length) // 6]


@pytest.mark.parametrize("form", [
    pytest.param(PASSWORD, id="as-is"),
    pytest.param(base64.b64encode(PASSWORD.encode()).decode(), id="base64-alone"),
    pytest.param(base64.urlsafe_b64encode(PASSWORD.encode()).decode(), id="base64-urlsafe"),
    pytest.param(AUTH, id="base64-user-password"),
    pytest.param(quote(PASSWORD, safe=""), id="url-quote"),
    pytest.param(quote(PASSWORD), id="url-quote-keeping-slash"),
    pytest.param(quote_plus(PASSWORD, safe=""), id="url-quote-plus"),
    pytest.param(re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), quote(PASSWORD, safe="")), id="url-lower-hex"),
    pytest.param(json.dumps(PASSWORD)[1:-1], id="json-escaped"),
])
def test_a_secret_in_any_of_its_common_encodings_is_masked(form):
    out = masked(f"exec_start: sh -c 'echo {form} | docker login'", SECRETS)
    assert out == f"exec_start: sh -c 'echo {MASK} | docker login'"


@pytest.mark.parametrize("prefix", [b"x", b"xy", b"xyz", b"user=ci&"])
@pytest.mark.parametrize("secret", ["password", "user:password"])
def test_base64_of_a_secret_inside_a_longer_text_is_masked_at_every_byte_offset(prefix, secret):
    data = PASSWORD.encode() if secret == "password" else f"{USER}:{PASSWORD}".encode()
    encoded = base64.b64encode(prefix + data + b"&more").decode()
    inner = _inner(encoded, len(prefix), len(data))
    assert len(inner) >= len(data)  # the characters that give the secret away
    out = masked(f"exec_start: curl -H 'X-Auth: {encoded}'", SECRETS)
    assert inner not in out and MASK in out


def test_overlapping_secrets_are_both_masked_whole():
    out = masked("exec_start: login alpha-secret-123-beta end", Secrets(["alpha-secret-123", "123-beta"]))
    assert out == f"exec_start: login {MASK} end"


def test_a_short_secret_is_masked_in_free_texts_but_never_in_names():
    secrets = Secrets(["team"])
    fields = operation_fields({**exec_record("exec_start: login -p team", note="the team password"),
                               "image": f"{REGISTRY}/team/app", "tag": "team", "container_name": "team-runner"},
                              secrets)
    assert (fields["image"], fields["tag"], fields["container_name"]) == (f"{REGISTRY}/team/app", "team",
                                                                          "team-runner")
    assert fields["raw_action"] == f"exec_start: login -p {MASK}"
    assert fields["attributes"] == {"note": f"the {MASK} password"}


def test_minimum_lengths_name_8_text_4():
    assert (NAME_MINIMUM, TEXT_MINIMUM) == (8, 4)
    three, seven, eight = Secrets(["abc"]), Secrets(["passwd7"]), Secrets(["passwd88"])
    assert masked("exec_start: x abc y", three) == "exec_start: x abc y"  # too short to hide anything
    record = {**exec_record("exec_start: -p passwd7"), "image": "acme/passwd7", "tag": "passwd88"}
    assert operation_fields(record, seven)["image"] == "acme/passwd7"
    assert operation_fields(record, seven)["raw_action"] == f"exec_start: -p {MASK}"
    assert operation_fields(record, eight)["tag"] == MASK


# --- Each record with its own builds' secrets (through ingestion) ------------------------------------------


def two_projects(password: str):
    BuildConfigurationFactory(ident="app", project=ProjectFactory(ident="acme"))
    other = BuildConfigurationFactory(ident="other", project=ProjectFactory(ident="elsewhere"))
    LoginConnectionFactory(configuration=other, connection__password=password, connection__registry=REGISTRY)


def test_another_builds_short_password_does_not_rewrite_this_builds_push(call, agent_token):
    two_projects("team")
    mine, theirs = start(call, agent_token, "app"), start(call, agent_token, "other")
    push = {**record([mine], time.time_ns(), action="push", image=f"{REGISTRY}/team/app", tag="9"),
            "digest": "sha256:" + "e" * 64}
    send(call, agent_token, [push, record([theirs], time.time_ns() + 1)])
    assert DockerOperation.objects.get(build_id=mine).image == f"{REGISTRY}/team/app"
    assert PushedImage.objects.get().repository == "team/app"
    assert not SetAsideRecord.objects.exists()


def test_another_builds_secret_is_not_masked_in_this_builds_records(call, agent_token):
    """Masked, it would tell this project's members that another project's password is `release-candidate`."""
    two_projects("release-candidate")
    mine, theirs = start(call, agent_token, "app"), start(call, agent_token, "other")
    command = "exec_start: make release-candidate"
    send(call, agent_token, [record([mine], time.time_ns(), action="exec", raw_action=command),
                             record([theirs], time.time_ns() + 1, action="exec", raw_action=command)])
    assert DockerOperation.objects.get(build_id=mine).raw_action == command
    assert DockerOperation.objects.get(build_id=theirs).raw_action == f"exec_start: make {MASK}"
