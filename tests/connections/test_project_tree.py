"""Moves in the project tree keep every configuration's login list inside its tree.

A login list uses connections of its configuration's project and that project's ancestors only. Moving a
project (with its subtree) under another parent, or a connection to another project, is refused by the
model's clean (so by the admin, the settings file and any full_clean) when a login list would break.
"""

import pytest
from django.core.exceptions import ValidationError

from connections.models import TREE_FIX, TREE_PROBLEMS_SHOWN, Connection, Project
from tests.factories import (
    BuildConfigurationFactory,
    LoginConnectionFactory,
    ProjectFactory,
    RegistryConnectionFactory,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def tree():
    """acme ─ team-a (configuration app logs in with acme's reg); other: a second root with its own reg."""
    acme = ProjectFactory(ident="acme")
    team_a = ProjectFactory(ident="team-a", parent=acme)
    other = ProjectFactory(ident="other")
    reg = RegistryConnectionFactory(project=acme, ident="reg")
    app = BuildConfigurationFactory(project=team_a, ident="app")
    LoginConnectionFactory(configuration=app, connection=reg)
    return {"acme": acme, "team-a": team_a, "other": other, "reg": reg, "app": app}


def refusal(obj, field):
    with pytest.raises(ValidationError) as info:
        obj.full_clean()
    return info.value.message_dict[field]


def test_moving_a_project_away_from_a_connection_its_configuration_logs_in_with_is_refused(tree):
    team_a = tree["team-a"]
    team_a.parent = tree["other"]
    assert refusal(team_a, "parent") == [
        "configuration 'app' (project 'team-a') logs in with connection 'reg' of project 'acme', which would no "
        "longer be its project or an ancestor",
        TREE_FIX,
    ]
    assert Project.objects.get(ident="team-a").parent.ident == "acme"


def test_moving_a_project_to_the_top_level_is_a_move_too(tree):
    team_a = tree["team-a"]
    team_a.parent = None
    assert "configuration 'app' (project 'team-a') logs in with connection 'reg'" in refusal(team_a, "parent")[0]


def test_moving_a_project_checks_the_configurations_of_its_whole_subtree(tree):
    deep = ProjectFactory(ident="deep", parent=ProjectFactory(ident="team-a-web", parent=tree["team-a"]))
    LoginConnectionFactory(configuration=BuildConfigurationFactory(project=deep, ident="deep-app"),
                           connection=tree["reg"])
    team_a = tree["team-a"]
    team_a.parent = tree["other"]
    messages = refusal(team_a, "parent")
    assert [m.split(" logs in")[0] for m in messages[:-1]] == [
        "configuration 'app' (project 'team-a')", "configuration 'deep-app' (project 'deep')",
    ]


def test_a_move_that_keeps_every_login_list_inside_its_tree_is_allowed(tree):
    # Under a subproject of acme, team-a still has acme among its ancestors.
    sibling = ProjectFactory(ident="team-b", parent=tree["acme"])
    team_a = tree["team-a"]
    team_a.parent = sibling
    team_a.full_clean()
    team_a.save()
    # A subtree whose configurations use only its own connections may go anywhere.
    own = ProjectFactory(ident="own", parent=tree["acme"])
    LoginConnectionFactory(configuration=BuildConfigurationFactory(project=own, ident="own-app"),
                           connection=RegistryConnectionFactory(project=own, ident="own-reg"))
    own.parent = tree["other"]
    own.full_clean()


def test_editing_a_project_without_moving_it_does_not_check_the_tree(tree):
    team_a = tree["team-a"]
    # A login list already outside its tree (made by a path that does not check) does not block other edits.
    Project.objects.filter(pk=team_a.pk).update(parent=tree["other"])
    team_a.refresh_from_db()
    team_a.name = "Team A, renamed"
    team_a.full_clean()


def test_the_refusal_lists_at_most_twenty_and_counts_the_rest(tree):
    for n in range(TREE_PROBLEMS_SHOWN + 5):
        configuration = BuildConfigurationFactory(project=tree["team-a"], ident=f"cfg-{n:02}")
        LoginConnectionFactory(configuration=configuration, connection=tree["reg"])
    team_a = tree["team-a"]
    team_a.parent = tree["other"]
    messages = refusal(team_a, "parent")
    assert len(messages) == TREE_PROBLEMS_SHOWN + 2
    assert messages[-2:] == ["and 6 more", TREE_FIX]  # 26 configurations: app and cfg-00..cfg-24


def test_a_project_still_cannot_be_its_own_ancestor(tree):
    acme = tree["acme"]
    acme.parent = tree["team-a"]
    assert refusal(acme, "parent") == ["a project cannot be its own ancestor"]


def test_moving_a_connection_away_from_a_configuration_that_logs_in_with_it_is_refused(tree):
    reg = tree["reg"]
    reg.project = tree["other"]
    assert refusal(reg, "project") == [
        "configuration 'app' (project 'team-a') logs in with connection 'reg', whose new project 'other' would not "
        "be its project or an ancestor",
        TREE_FIX,
    ]
    assert Connection.objects.get(pk=reg.pk).project.ident == "acme"


def test_moving_a_connection_within_the_tree_of_its_configurations_is_allowed(tree):
    reg = RegistryConnectionFactory(project=tree["team-a"], ident="team-reg")
    LoginConnectionFactory(configuration=tree["app"], connection=reg)
    reg.project = tree["acme"]  # up to an ancestor: still usable by team-a's configurations
    reg.full_clean()
    unused = RegistryConnectionFactory(project=tree["acme"], ident="unused")
    unused.project = tree["other"]
    unused.full_clean()


def test_moving_a_configuration_to_another_project_keeps_its_logins_within_the_new_tree():
    from builds.models import BuildConfiguration
    from tests.factories import BuildConfigurationFactory, LoginConnectionFactory, ProjectFactory

    home, elsewhere = ProjectFactory(ident="home"), ProjectFactory(ident="elsewhere")
    configuration = BuildConfigurationFactory(ident="app", project=home)
    LoginConnectionFactory(configuration=configuration, connection__project=home, connection__ident="reg")
    configuration.project = elsewhere
    with pytest.raises(ValidationError) as refused:
        configuration.full_clean()
    assert refused.value.message_dict["project"] == [
        "configuration 'app' logs in with connection 'reg' of project 'home', which would not be 'elsewhere' "
        "or one of its ancestors; remove those logins first"]
    assert BuildConfiguration.objects.get(pk=configuration.pk).project == home
    child = ProjectFactory(ident="home-child", parent=home)
    configuration.project = child  # the parent's connection stays usable by a subproject
    configuration.full_clean()
