"""Users' API tokens: stored hashed and shown once, they expire, are revoked, and are limited to
projects and to reading; users make and revoke their own in the admin or with drf_create_token."""

import hashlib
import io
import json
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.core.management import call_command, get_commands
from django.core.management.base import CommandError
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from connections import roles
from connections.models import ApiToken, Membership
from connections.services import api_token_authenticate, api_token_issue, api_token_revoke
from tests.factories import AgentFactory, BuildConfigurationFactory, BuildFactory, ProjectFactory, api_token_for

pytestmark = pytest.mark.django_db
Role = Membership.Role
ROOT = Path(__file__).resolve().parents[2]
TOKEN = re.compile(r"dsu_[A-Za-z0-9_-]{43}")


@pytest.fixture
def world():
    """alice develops team-a (with its subproject team-a-web) and team-b; bob views team-b; one build each."""
    team_a, team_b = ProjectFactory(ident="team-a"), ProjectFactory(ident="team-b")
    web = ProjectFactory(ident="team-a-web", parent=team_a)
    alice, bob = User.objects.create_user("alice"), User.objects.create_user("bob")
    Membership.objects.create(project=team_a, user=alice, role=Role.DEVELOPER)
    Membership.objects.create(project=team_b, user=alice, role=Role.DEVELOPER)
    Membership.objects.create(project=team_b, user=bob, role=Role.VIEWER)
    agent = AgentFactory(name="agent-1")
    for ident, project in (("app-a", team_a), ("web", web), ("app-b", team_b)):
        BuildFactory(configuration=BuildConfigurationFactory(ident=ident, project=project), agent=agent)
    return {"team-a": team_a, "team-b": team_b, "web": web, "alice": alice, "bob": bob}


def get(client, url, token):
    return client.get(url, HTTP_AUTHORIZATION=f"Token {token}")


def listed(client, token) -> set[str]:
    response = get(client, "/api/v1/builds/", token)
    assert response.status_code == 200, response.content
    return {build["configuration"] for build in response.json()["results"]}


def acting_as(token: str):
    """The user a request with `token` acts as (what the authentication gives the views)."""
    row = api_token_authenticate(token)
    user = row.user
    user.api_token = row
    return user


def database_text() -> str:
    """Every row of every table, and every session decoded, as one text."""
    rows = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            rows.extend(repr(row) for row in cursor.fetchall())
    rows.extend(repr(session.get_decoded()) for session in Session.objects.all())
    return "\n".join(rows)


# --- The API with a token ---------------------------------------------------------------------------


def test_a_token_is_stored_as_its_digest_and_its_text_is_nowhere_in_the_database(world, client):
    row, token = api_token_issue(user=world["alice"], name="ci")
    assert listed(client, token) == {"app-a", "web", "app-b"}
    row.refresh_from_db()
    assert row.digest == hashlib.sha256(token.encode()).hexdigest()
    assert token.startswith(row.prefix) and len(row.prefix) < len(token) // 3
    assert token not in database_text() and token[len(row.prefix):] not in database_text()


def test_an_expired_token_is_refused_saying_when_it_expired_and_not_whose_it_was(world, client):
    row, token = api_token_issue(user=world["alice"], name="ci", expires_at=timezone.now() + timedelta(days=1))
    assert get(client, "/api/v1/builds/", token).status_code == 200
    ApiToken.objects.filter(pk=row.pk).update(expires_at=timezone.now() - timedelta(minutes=5))
    response = get(client, "/api/v1/builds/", token)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Token"
    detail = response.json()["detail"]
    assert detail.startswith("this API token expired at ") and "drf_create_token" in detail
    assert "alice" not in detail


def test_a_revoked_token_is_refused_at_once_saying_so(world, client):
    row, token = api_token_issue(user=world["alice"], name="ci")
    assert get(client, "/api/v1/builds/", token).status_code == 200
    assert api_token_revoke(token=row) is True
    response = get(client, "/api/v1/builds/", token)
    assert response.status_code == 401
    assert response.json()["detail"].startswith("this API token was revoked at ")
    assert "alice" not in response.json()["detail"]
    assert api_token_revoke(token=row) is False  # already revoked


def test_an_unknown_token_and_one_of_an_inactive_user_are_refused(world, client):
    assert get(client, "/api/v1/builds/", "dsu_" + "x" * 43).json()["detail"].startswith("this API token is not valid")
    assert get(client, "/api/v1/builds/", "0123456789abcdef" * 2).status_code == 401  # e.g. an old DRF token
    token = api_token_for(world["bob"])
    User.objects.filter(pk=world["bob"].pk).update(is_active=False)
    assert get(client, "/api/v1/builds/", token).status_code == 401


def test_a_token_limited_to_a_project_lists_only_that_projects_builds_and_its_subprojects(world, client):
    limited = api_token_for(world["alice"], projects=[world["team-a"]])
    assert listed(client, limited) == {"app-a", "web"}
    assert listed(client, api_token_for(world["alice"])) == {"app-a", "web", "app-b"}
    assert roles.project_roles(acting_as(limited)) == {world["team-a"].pk: Role.DEVELOPER,
                                                       world["web"].pk: Role.DEVELOPER}


def test_a_developers_read_only_token_reads_but_cannot_start_a_build(world, client):
    token = api_token_for(world["alice"], read_only=True)
    user = acting_as(token)
    assert set(roles.project_roles(user).values()) == {Role.VIEWER}
    assert not roles.has_role(user, world["team-a"], Role.DEVELOPER)
    assert listed(client, token) == {"app-a", "web", "app-b"}
    response = client.post("/api/v1/builds/", json.dumps({"configuration": "app-a", "agent": "agent-1"}),
                           content_type="application/json", HTTP_AUTHORIZATION=f"Token {token}")
    assert response.status_code == 403
    assert "read-only" in response.json()["detail"]


def test_a_superusers_read_only_or_project_limited_token_is_not_a_superuser(world, admin_user):
    assert roles.is_superuser(acting_as(api_token_for(admin_user)))
    read_only = acting_as(api_token_for(admin_user, read_only=True))
    assert not roles.is_superuser(read_only)
    assert set(roles.project_roles(read_only).values()) == {Role.VIEWER}
    limited = acting_as(api_token_for(admin_user, projects=[world["team-b"]]))
    assert not roles.is_superuser(limited)
    assert roles.project_roles(limited) == {world["team-b"].pk: Role.ADMIN}


def test_a_token_cannot_be_limited_to_a_project_where_its_user_has_no_role(world):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError, match="bob has no role on project team-a"):
        api_token_issue(user=world["bob"], name="ci", projects=[world["team-a"]])


def test_last_use_is_written_at_most_once_a_minute(world, client):
    row, token = api_token_issue(user=world["alice"], name="ci")
    assert row.last_used_at is None
    get(client, "/api/v1/builds/", token)
    row.refresh_from_db()
    first = row.last_used_at
    assert first is not None
    get(client, "/api/v1/builds/", token)
    row.refresh_from_db()
    assert row.last_used_at == first
    ApiToken.objects.filter(pk=row.pk).update(last_used_at=first - timedelta(minutes=2))
    get(client, "/api/v1/builds/", token)
    row.refresh_from_db()
    assert row.last_used_at > first


def test_the_openapi_schema_documents_the_token_scheme(client):
    schema = client.get("/api/v1/schema/?format=json").json()
    scheme = schema["components"]["securitySchemes"]["apiToken"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "Authorization")
    assert {"apiToken": []} in schema["paths"]["/api/v1/builds/"]["get"]["security"]
    assert "tokenAuth" not in schema["components"]["securitySchemes"]


# --- drf_create_token -----------------------------------------------------------------------------------


def create_token(*args) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("drf_create_token", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_drf_create_token_is_ours_and_prints_the_token_alone(world, client):
    assert get_commands()["drf_create_token"] == "connections"
    out, err = create_token("alice")
    token = out.strip()
    assert TOKEN.fullmatch(token), out
    assert "shown only this once" in err and token not in err and "no role" not in err
    assert listed(client, token) == {"app-a", "web", "app-b"}
    row = ApiToken.objects.get(user=world["alice"])
    assert (row.expires_at, row.read_only, list(row.projects.all())) == (None, False, [])


def test_drf_create_token_limits_the_token_to_projects_reading_and_days(world, client):
    out, err = create_token("alice", "--project", "team-a", "--read-only", "--expires-in", "7", "--name", "gitlab")
    row = ApiToken.objects.get(user=world["alice"])
    assert (row.name, row.read_only, [p.ident for p in row.projects.all()]) == ("gitlab", True, ["team-a"])
    assert abs(row.expires_at - (timezone.now() + timedelta(days=7))) < timedelta(minutes=1)
    assert "projects: team-a" in err and "read-only" in err and "expires" in err
    assert listed(client, out.strip()) == {"app-a", "web"}


def test_drf_create_token_reset_revokes_the_users_other_tokens_only(world, client):
    old = [api_token_for(world["alice"]) for _ in range(2)]
    bobs = api_token_for(world["bob"])
    kept, _ = create_token("alice")
    assert all(get(client, "/api/v1/builds/", token).status_code == 200 for token in [*old, kept.strip()])
    new, _ = create_token("alice", "--reset")
    assert [get(client, "/api/v1/builds/", token).status_code for token in [*old, kept.strip()]] == [401] * 3
    assert get(client, "/api/v1/builds/", new.strip()).status_code == 200
    assert get(client, "/api/v1/builds/", bobs).status_code == 200


def test_drf_create_token_refuses_an_unknown_user_or_project_and_one_without_a_role(world):
    with pytest.raises(CommandError, match="no user 'nobody'"):
        create_token("nobody")
    with pytest.raises(CommandError, match="no project 'nope'"):
        create_token("alice", "--project", "team-a", "--project", "nope")
    with pytest.raises(CommandError, match="bob has no role on project team-a"):
        create_token("bob", "--project", "team-a")
    with pytest.raises(CommandError, match="not a number of days"):
        create_token("alice", "--expires-in", "0")
    assert not ApiToken.objects.exists()
    _, err = create_token(User.objects.create_user("carol").username)
    assert "carol has no role on any project yet" in err


@pytest.mark.django_db(transaction=True)
def test_a_shell_script_gets_the_token_from_manage_py(world, client):
    from tests.e2e.conftest import database_url

    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": database_url(), "PYTHON": sys.executable,
           "DJANGO_SETTINGS_MODULE": "dockersupport_site.test_settings"}
    script = 'TOKEN=$("$PYTHON" manage.py drf_create_token alice --project team-b) && echo "Token $TOKEN"'
    result = subprocess.run(["sh", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    header = result.stdout.strip()
    assert TOKEN.fullmatch(header.removeprefix("Token ")), result.stdout
    assert listed(client, header.removeprefix("Token ")) == {"app-b"}


# --- The admin ----------------------------------------------------------------------------------------


def test_a_member_sees_only_their_own_tokens_and_a_superuser_everyones(world, client, admin_client):
    api_token_issue(user=world["alice"], name="alices-ci")
    bobs, _ = api_token_issue(user=world["bob"], name="bobs-ci")
    url = reverse("admin:connections_apitoken_changelist")
    client.force_login(world["alice"])
    page = client.get(url).content.decode()
    assert "alices-ci" in page and "bobs-ci" not in page
    assert client.get(reverse("admin:connections_apitoken_change", args=[bobs.pk])).status_code == 302  # not found
    page = admin_client.get(url).content.decode()
    assert "alices-ci" in page and "bobs-ci" in page


def test_the_admin_lists_tokens_by_state(world, client):
    usable, _ = api_token_issue(user=world["alice"], name="usable-one")
    expired, _ = api_token_issue(user=world["alice"], name="expired-one", expires_at=timezone.now() + timedelta(days=1))
    ApiToken.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(days=1))
    api_token_revoke(token=api_token_issue(user=world["alice"], name="revoked-one")[0])
    client.force_login(world["alice"])
    url = reverse("admin:connections_apitoken_changelist")
    for state in ("usable", "expired", "revoked"):
        page = client.get(url, {"state": state}).content.decode()
        assert [name for name in ("usable-one", "expired-one", "revoked-one") if name in page] == [f"{state}-one"]


def test_the_admin_shows_a_new_token_once_and_offers_only_the_users_projects(world, client):
    client.force_login(world["bob"])
    add = reverse("admin:connections_apitoken_add")
    offered = client.get(add).context["adminform"].form.fields["projects"].queryset
    assert {project.ident for project in offered} == {"team-b"}
    refused = client.post(add, {"name": "ci", "projects": [world["team-a"].pk]})
    assert refused.status_code == 200 and "projects" in refused.context["adminform"].form.errors
    response = client.post(add, {"name": "ci", "projects": [world["team-b"].pk], "read_only": "on",
                                 "expires_at_0": "", "expires_at_1": ""})
    [token] = TOKEN.findall(response.content.decode())
    assert "shown only this once" in response.content.decode()
    # On the page alone: in no cookie (the messages cookie is signed, not encrypted), never cached.
    assert "no-store" in response["Cache-Control"]
    assert all(token not in cookie.value for cookie in client.cookies.values())
    row = ApiToken.objects.get(user=world["bob"])
    assert (row.name, row.read_only, [p.ident for p in row.projects.all()]) == ("ci", True, ["team-b"])
    assert token not in database_text()
    assert listed(client, token) == {"app-b"}
    for url in (reverse("admin:connections_apitoken_changelist"),
                reverse("admin:connections_apitoken_change", args=[row.pk])):
        page = client.get(url).content.decode()
        assert row.prefix in page and token not in page


def test_the_admin_refuses_an_expiry_in_the_past(world, client):
    client.force_login(world["bob"])
    response = client.post(reverse("admin:connections_apitoken_add"), {
        "name": "ci", "expires_at_0": "2020-01-01", "expires_at_1": "00:00:00"})
    assert response.status_code == 200
    assert "must be in the future" in str(response.context["adminform"].form.errors["expires_at"])
    assert not ApiToken.objects.exists()


def test_a_token_is_never_edited_only_revoked_by_its_user_or_a_superuser(world, client, admin_client):
    alices, alices_token = api_token_issue(user=world["alice"], name="ci")
    bobs, bobs_token = api_token_issue(user=world["bob"], name="ci")
    client.force_login(world["alice"])
    change = reverse("admin:connections_apitoken_change", args=[alices.pk])
    assert client.post(change, {"name": "renamed", "read_only": "on"}).status_code == 403
    changelist = reverse("admin:connections_apitoken_changelist")
    # Alice's action on both revokes hers only: bob's is not hers to see.
    client.post(changelist, {"action": "revoke", "_selected_action": [alices.pk, bobs.pk]})
    alices.refresh_from_db()
    bobs.refresh_from_db()
    assert alices.name == "ci" and not alices.read_only and alices.revoked_at is not None
    assert bobs.revoked_at is None
    assert client.post(reverse("admin:connections_apitoken_revoke", args=[bobs.pk])).status_code == 404
    assert get(client, "/api/v1/builds/", bobs_token).status_code == 200
    assert "Revoke" in admin_client.get(reverse("admin:connections_apitoken_change", args=[bobs.pk])).content.decode()
    admin_client.post(reverse("admin:connections_apitoken_revoke", args=[bobs.pk]))
    assert get(client, "/api/v1/builds/", bobs_token).status_code == 401
    assert get(client, "/api/v1/builds/", alices_token).status_code == 401


@pytest.mark.django_db(transaction=True)  # a schema change: outside a test transaction (SQLite needs it)
def test_drf_tokens_of_an_earlier_release_are_carried_over_hashed_and_keep_working(client, django_user_model):
    """What migration 0003 does where DRF's clear-text token table is left from an earlier release."""
    import importlib

    from django.db import connection

    from connections.models import ApiToken

    carry = importlib.import_module("connections.migrations.0003_carry_over_drf_tokens")
    user = django_user_model.objects.create_superuser("ci-old", password="pw")
    key = "9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b"  # the shape of a DRF token
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE authtoken_token (key varchar(40) PRIMARY KEY, user_id integer, "
                       "created timestamp with time zone)" if connection.vendor == "postgresql" else
                       "CREATE TABLE authtoken_token (key varchar(40) PRIMARY KEY, user_id integer, created datetime)")
        cursor.execute("INSERT INTO authtoken_token VALUES (%s, %s, %s)", [key, user.pk, "2026-01-02 03:04:05+00:00"])
    from django.apps import apps

    with connection.schema_editor() as editor:
        carry.carry_over(apps, editor)
    assert "authtoken_token" not in connection.introspection.table_names()
    token = ApiToken.objects.get(user=user)
    assert token.digest != key and key not in str(list(ApiToken.objects.values()))
    response = client.get("/api/v1/builds/", HTTP_AUTHORIZATION=f"Token {key}")
    assert response.status_code == 200


def test_a_token_limited_to_projects_that_were_all_deleted_reaches_nothing(world, admin_user):
    """Deleting its projects must not widen a token (an empty list is no limit only when made so)."""
    sandbox = ProjectFactory(ident="sandbox")
    for user in (admin_user, world["alice"]):
        Membership.objects.get_or_create(project=sandbox, user=user, defaults={"role": Membership.Role.ADMIN})
    tokens = {user: api_token_issue(user=user, name="ci", projects=[sandbox])[0]
              for user in (admin_user, world["alice"])}
    sandbox.delete()
    for user, token in tokens.items():
        token.refresh_from_db()
        user = type(user).objects.get(pk=user.pk)
        user.api_token = token
        assert roles.project_roles(user) == {}
        assert not roles.is_superuser(user)
