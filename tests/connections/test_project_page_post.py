"""The project page's list of connections is read-only: a POST naming another project's connection in it is
neither a server error nor a change."""

import pytest
from django.urls import reverse

from connections.models import Connection
from tests.factories import ProjectFactory, RegistryConnectionFactory

pytestmark = pytest.mark.django_db


def test_a_crafted_post_with_another_projects_connection_in_the_list_changes_nothing(admin_client):
    project, other = ProjectFactory(ident="a"), ProjectFactory(ident="b")
    RegistryConnectionFactory(project=project, ident="mine")
    theirs = RegistryConnectionFactory(project=other, ident="theirs", name="Theirs")
    url = reverse("admin:connections_project_change", args=[project.pk])
    page = admin_client.get(url)
    data = {"ident": "a", "name": "Renamed"}
    for inline in page.context["inline_admin_formsets"]:
        formset = inline.formset
        data[f"{formset.prefix}-TOTAL_FORMS"] = formset.total_form_count()
        data[f"{formset.prefix}-INITIAL_FORMS"] = formset.initial_form_count()
        for i, form in enumerate(formset.forms):
            data[f"{formset.prefix}-{i}-id"] = form.instance.pk
    data["connections-0-id"] = theirs.pk  # not one of this project's
    data["connections-0-name"] = "taken over"
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.content[:300]
    theirs.refresh_from_db()
    assert (theirs.project, theirs.name) == (other, "Theirs")
    assert Connection.objects.filter(project=project).count() == 1
