"""The rules of server clean-up that need no registry: which connections are tried and in what order, what is
never deleted (uncertain owner, protected tags, digests held by kept builds), what an admin settles, and what
the dry run says. Runs on SQLite and PostgreSQL alike."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone

from builds.cleanup.registry import (
    DigestHolders,
    deletion_candidates,
    digest_holders,
    image_decide,
    image_hold,
    pending_deletions_process,
    plan_text,
    protections_for,
    retention_plan,
    tag_patterns,
)
from builds.models import PushedImage
from connections.models import Membership
from connections.registries import Deletion, DeletionResult, ImageRef
from connections.selectors import connections_nearest_first
from tests.factories import (
    BuildConfigurationFactory,
    BuildFactory,
    EcrConnectionFactory,
    ProjectFactory,
    RegistryConnectionFactory,
)

pytestmark = pytest.mark.django_db
REGISTRY = "registry.example.test:5000"
D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def image(project, tag, digest=D1, *, registry=REGISTRY, status="pending", **fields):
    return PushedImage.objects.create(
        project=project, configuration_ident=fields.pop("configuration_ident", "app"),
        build_number=fields.pop("build_number", 1), registry=registry, repository="team/app", tag=tag,
        digest=digest, pushed_at=timezone.now(), cleanup_status=status, next_attempt_at=timezone.now(), **fields)


def test_protected_tag_patterns_are_separated_by_spaces_or_commas(settings):
    assert tag_patterns(" latest, v*  release-*,,") == ["latest", "v*", "release-*"]
    settings.DOCKERSUPPORT_PROTECTED_TAGS = "stable"
    BuildConfigurationFactory(ident="app", protected_tags="v*")
    protections = protections_for(["app", "deleted-since"])
    assert protections["app"].match("v1.2") == "pattern 'v*' of configuration 'app'"
    assert protections["app"].match("stable") == "pattern 'stable' of DOCKERSUPPORT_PROTECTED_TAGS"
    assert protections["deleted-since"].match("v1.2") == ""  # only the site's patterns are left
    assert protections["app"].match("V1") == "" and protections["app"].match("") == ""  # tags are case-sensitive


def test_the_recorded_login_is_tried_first_then_the_projects_nearest_first_never_another_registry_or_project():
    org = ProjectFactory(ident="org")
    team = ProjectFactory(ident="team", parent=org)
    parents = RegistryConnectionFactory(project=org, ident="push", registry=REGISTRY)
    own = RegistryConnectionFactory(project=team, ident="pull", registry=f"https://{REGISTRY.upper()}/")
    RegistryConnectionFactory(project=team, ident="elsewhere", registry="other.example.test")
    strangers = RegistryConnectionFactory(project=ProjectFactory(ident="stranger"), ident="push", registry=REGISTRY)
    usable = connections_nearest_first(team)

    assert deletion_candidates(image(team, "1"), usable).connections == [own, parents]
    assert deletion_candidates(image(team, "2", connection=parents), usable).connections == [parents, own]
    recorded_elsewhere = deletion_candidates(image(team, "3", connection=strangers), usable)
    assert recorded_elsewhere.connections == [own, parents]
    assert "connection stranger/push (its build's login) is not one of project 'team'" in recorded_elsewhere.note


def test_images_of_uncertain_owner_protected_tags_or_unknown_digests_are_held_before_any_registry_call(settings):
    settings.DOCKERSUPPORT_PROTECTED_TAGS = "latest"
    project = ProjectFactory()
    protection = protections_for(["app"])["app"]
    uncertain = image(project, "1", owner_uncertain=True, owner_note="pushed while app #1 and web #2 ran")
    assert image_hold(uncertain, protection).reason.startswith("owner uncertain: pushed while app #1 and web #2 ran;")
    assert image_hold(image(project, "latest"), protection).reason == (
        "tag 'latest' is protected (pattern 'latest' of DOCKERSUPPORT_PROTECTED_TAGS)")
    assert image_hold(image(project, "2", digest=""), protection).reason.startswith("its digest was not recorded")
    assert image_hold(image(project, "3"), protection) is None
    # No registry is asked: the project has no connection, and they are kept rather than failed.
    assert pending_deletions_process() == {"kept": 3, "failed": 1}


def holders_for(images) -> DigestHolders:
    return digest_holders(REGISTRY, images, protections_for({i.configuration_ident for i in images}))


def test_a_digest_is_deleted_only_when_deleted_builds_tags_alone_point_to_it():
    project = ProjectFactory()
    mine, sibling = image(project, "b1"), image(project, "b2")
    holders = holders_for([mine])
    assert image_decide(mine, {D1: {"b1", "b2"}}, holders, by_tag=False) == (ImageRef(digest=D1), "")
    kept = image_decide(mine, {D1: {"b1", "stable"}}, holders, by_tag=False)
    assert kept.result == DeletionResult.KEPT and "tag 'stable' also points to this digest" in kept.reason
    # A registry that removes one tag alone (ECR): only this build's own tag, while it still points there.
    assert image_decide(mine, {D1: {"b1", "stable"}}, holders, by_tag=True) == (
        ImageRef(tag="b1"), "only tag 'b1' was removed: tag(s) stable still point to the digest")
    moved = image_decide(mine, {D1: {"stable"}, D2: {"b1"}}, holders, by_tag=True)
    assert moved.result == DeletionResult.KEPT
    assert sibling.tag == "b2"


def test_tags_of_images_not_being_deleted_are_not_the_deletions_own():
    project = ProjectFactory()
    BuildConfigurationFactory(ident="keeps", protected_tags="release-*")
    mine = image(project, "b1")
    kept = image(project, "b2", status="kept", configuration_ident="other")  # its configuration keeps pushed images
    image(project, "release-1", configuration_ident="keeps")  # protected by its own configuration
    holders = holders_for([mine])
    decision = image_decide(mine, {D1: {"b1", "b2", "release-1"}}, holders, by_tag=False)
    assert decision.result == DeletionResult.KEPT
    # The image its configuration keeps holds the digest itself (not only its tag).
    assert "an image that is kept (other #" in decision.reason and "tag 'b2'" in decision.reason
    kept.delete()
    assert "tag 'b2', 'release-1' also point" in image_decide(mine, {D1: {"b1", "b2", "release-1"}},
                                                              holders_for([mine]), by_tag=False).reason


def test_a_digest_held_by_a_kept_build_or_an_uncertain_image_is_kept_whatever_the_tags():
    project = ProjectFactory()
    configuration = BuildConfigurationFactory(project=project, ident="app")
    kept_build = BuildFactory(configuration=configuration, number=4, status="succeeded")
    image(project, "x", D1, build=kept_build, status="kept")
    image(project, "y", D2, owner_uncertain=True, build_number=6)
    first, second = image(project, "b1", D1), image(project, "b2", D2)
    holders = holders_for([first, second])
    assert image_decide(first, {}, holders, by_tag=True) == Deletion.kept(
        "build app #4, which is kept, pushed the same digest")
    assert image_decide(second, {D2: {"b2"}}, holders, by_tag=False).reason == (
        "an image whose owner is uncertain (app #6, tag 'y') has the same digest")


def test_registries_are_compared_by_host():
    project = ProjectFactory()
    image(project, "1", D1, build=BuildFactory(status="succeeded"), status="kept", registry=REGISTRY.upper())
    mine = image(project, "2", D1)
    assert image_decide(mine, {D1: {"2"}}, holders_for([mine]), by_tag=False).result == DeletionResult.KEPT


def test_settling_the_owner_needs_the_admin_role_and_sends_a_kept_tombstone_back_to_deletion(client):
    project, other = ProjectFactory(ident="acme"), ProjectFactory(ident="other")
    users = {name: User.objects.create_user(name, password=f"pw-{name}") for name in ("alice", "vic")}
    Membership.objects.create(project=project, user=users["alice"], role=Membership.Role.ADMIN)
    Membership.objects.create(project=other, user=users["alice"], role=Membership.Role.VIEWER)
    Membership.objects.create(project=project, user=users["vic"], role=Membership.Role.VIEWER)
    tombstone = image(project, "1", owner_uncertain=True, owner_note="pushed while two builds ran")
    assert pending_deletions_process() == {"kept": 1}
    running = image(project, "2", build=BuildFactory(), status="kept", owner_uncertain=True)
    not_hers = image(other, "3", owner_uncertain=True)
    url = reverse("admin:builds_pushedimage_changelist")

    client.force_login(users["vic"])
    client.post(url, {"action": "settle_owner", "_selected_action": [tombstone.pk]})
    client.force_login(users["alice"])
    response = client.post(url, {"action": "settle_owner", "_selected_action": [tombstone.pk, not_hers.pk]},
                           follow=True)
    assert "Nothing done: you may not settle the owner of" in str(list(response.context["messages"])[0])
    assert PushedImage.objects.filter(owner_uncertain=True).count() == 3
    client.post(url, {"action": "settle_owner", "_selected_action": [tombstone.pk, running.pk]})

    tombstone.refresh_from_db()
    running.refresh_from_db()
    assert not tombstone.owner_uncertain and tombstone.owner_note.startswith("settled by alice at ")
    assert tombstone.cleanup_status == "pending" and tombstone.next_attempt_at <= timezone.now()
    assert not running.owner_uncertain and running.cleanup_status == "kept"  # its build still exists


def test_the_dry_run_says_which_connections_would_be_tried_and_what_is_kept(settings):
    settings.DOCKERSUPPORT_PROTECTED_TAGS = "latest"
    org = ProjectFactory(ident="org")
    team = ProjectFactory(ident="team", parent=org)
    RegistryConnectionFactory(project=team, ident="pull", registry=REGISTRY)
    push = RegistryConnectionFactory(project=org, ident="push", registry=REGISTRY)
    ecr = EcrConnectionFactory(project=team, ident="ecr")
    configuration = BuildConfigurationFactory(project=team, ident="app", keep_last=1, cleanup_pushed_images=True)
    old = BuildFactory(configuration=configuration, number=1, status="succeeded",
                       started_at=timezone.now() - timedelta(days=1))
    BuildFactory(configuration=configuration, number=2, status="succeeded")
    image(team, "1", D1, build=old, status="kept", connection=push)
    image(team, "latest", D1, build=old, status="kept")
    image(team, "2", D2, build=old, status="kept", owner_uncertain=True, owner_note="two builds ran")
    image(team, "3", D2, build=old, status="kept", registry=ecr.registry_address)
    text = plan_text(retention_plan())
    assert f"delete {REGISTRY}/team/app@{D1} from {REGISTRY} with connection org/push, else team/pull" in text
    assert f"keep {REGISTRY}/team/app@{D1} in {REGISTRY}: tag 'latest' is protected" in text
    assert f"keep {REGISTRY}/team/app@{D2} in {REGISTRY}: owner uncertain: two builds ran" in text
    assert f"from {ecr.registry_address} with connection team/ecr" in text
    assert text.endswith("1 build(s) to delete, 2 pushed image(s) to delete from their registries")


def test_aws_out_of_reach_is_retried_later_not_failed():
    project = ProjectFactory()
    connection = EcrConnectionFactory(project=project, endpoint_url="http://127.0.0.1:9")  # nothing listens
    row = image(project, "1", registry=connection.registry_address)
    assert pending_deletions_process() == {"retrying": 1}
    row.refresh_from_db()
    assert row.cleanup_status == "pending" and row.cleanup_reason.startswith(
        f"connection {connection}: AWS could not be asked: ")
