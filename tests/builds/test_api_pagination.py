"""GET /api/v1/builds/{id}/docker-info/ answers one page of operations (still a list, under `operations`)
with their total and the links to the next and previous pages beside it; the summary and the pushed
images stay whole. And the API's messages speak API (a "number" field), not run_build's options."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from builds.login import services
from builds.models import Build, DockerOperation, PushedImage
from tests.factories import AgentFactory, BuildConfigurationFactory, BuildFactory, api_token_for

pytestmark = pytest.mark.django_db
T0 = datetime(2026, 9, 21, tzinfo=UTC)


@pytest.fixture
def api(client, admin_user):
    token = api_token_for(admin_user)

    def call(method, url, data=None):
        return getattr(client, method)(url, data=json.dumps(data) if data is not None else None,
                                       content_type="application/json", HTTP_AUTHORIZATION=f"Token {token}")

    return call


def with_operations(count: int, pushes: int = 0) -> Build:
    """A build with `count` operations 1 ms apart (every 5th a pull of busybox, the others starts), and
    `pushes` pushed images."""
    build = BuildFactory(started_at=T0)
    DockerOperation.objects.bulk_create(
        DockerOperation(
            build=build, agent=build.agent, time=T0 + timedelta(milliseconds=n), time_nano=n, event_type="image",
            action="pull" if n % 5 == 0 else "start", raw_action="pull", actor_id=f"a{n}",
            image="busybox" if n % 5 == 0 else f"app-{n}", tag="1", identity=f"{n:064x}",
        ) for n in range(count))
    for n in range(pushes):
        PushedImage.objects.create(build=build, project=build.configuration.project,
                                   configuration_ident=build.configuration.ident, build_number=build.number,
                                   registry="127.0.0.1:5000", repository="team/app", tag=f"v{n}",
                                   digest=f"sha256:{n:064x}", pushed_at=T0)
    return build


def test_operations_are_one_page_with_the_total_and_the_next_link_beside_them(api):
    build = with_operations(250, pushes=3)
    url = f"/api/v1/builds/{build.pk}/docker-info/"
    first = api("get", url).json()
    assert list(first) == ["summary", "operations", "operations_count", "operations_next", "operations_previous",
                           "pushed_images"]
    assert [o["time_nano"] for o in first["operations"]] == list(range(100))  # the default size, in time order
    assert first["operations_count"] == 250
    assert first["operations_next"] == f"http://testserver{url}?page=2"
    assert first["operations_previous"] is None
    # The summary and the pushed images are the whole build's, on every page.
    assert first["summary"]["operation_count"] == 250 and first["summary"]["counts"] == {"pull": 50, "start": 200}
    assert len(first["pushed_images"]) == 3

    second = api("get", first["operations_next"]).json()
    assert [o["time_nano"] for o in second["operations"]] == list(range(100, 200))
    assert second["operations_previous"] == f"http://testserver{url}"  # page 1 is the address without ?page
    assert second["operations_next"] == f"http://testserver{url}?page=3"
    assert second["summary"] == first["summary"] and second["pushed_images"] == first["pushed_images"]

    last = api("get", second["operations_next"]).json()
    assert [o["time_nano"] for o in last["operations"]] == list(range(200, 250))
    assert last["operations_next"] is None and last["operations_previous"] == f"http://testserver{url}?page=2"


def test_the_page_size_and_the_filters_carry_over_to_the_links(api):
    build = with_operations(250)
    url = f"/api/v1/builds/{build.pk}/docker-info/?image=busy&page_size=20"
    first = api("get", url).json()
    assert first["operations_count"] == 50 and len(first["operations"]) == 20
    assert {o["image"] for o in first["operations"]} == {"busybox"}
    assert first["operations_next"] == f"http://testserver/api/v1/builds/{build.pk}/docker-info/?image=busy&page=2" \
                                       "&page_size=20"
    third = api("get", first["operations_next"].replace("page=2", "page=3")).json()
    assert [o["time_nano"] for o in third["operations"]] == list(range(200, 250, 5))
    assert third["operations_next"] is None
    assert third["summary"]["operation_count"] == 250  # the summary is not filtered


def test_a_build_without_operations_has_an_empty_first_page(api):
    build = with_operations(0)
    answer = api("get", f"/api/v1/builds/{build.pk}/docker-info/").json()
    assert answer["operations"] == [] and answer["operations_count"] == 0
    assert answer["operations_next"] is None and answer["operations_previous"] is None


def test_a_page_past_the_last_is_a_404_saying_how_many_pages_there_are(api):
    build = with_operations(250)
    response = api("get", f"/api/v1/builds/{build.pk}/docker-info/?page=4")
    assert response.status_code == 404
    assert response.json() == {"detail": "page 4 of the operations does not exist: there are 250 operations, "
                                          "100 a page, so 3 pages"}


@pytest.mark.parametrize("query, field, message", [
    ("page=0", "page", "a page number is a whole number from 1 to 2147483647"),
    ("page=two", "page", "a page number is a whole number from 1 to 2147483647"),
    ("page=99999999999999999999", "page", "a page number is a whole number from 1 to 2147483647"),
    ("page_size=0", "page_size", "a page size is a whole number from 1 to 1000"),
    ("page_size=1001", "page_size", "a page size is a whole number from 1 to 1000"),
])
def test_a_page_or_size_that_is_no_whole_number_in_range_is_a_400_naming_it(api, query, field, message):
    build = with_operations(3)
    response = api("get", f"/api/v1/builds/{build.pk}/docker-info/?{query}")
    assert response.status_code == 400
    assert response.json() == {field: [message]}


def test_a_taken_build_number_is_refused_in_the_apis_words(api):
    configuration = BuildConfigurationFactory(ident="app")
    agent = AgentFactory(name="agent-1")
    BuildFactory(configuration=configuration, agent=agent, number=7)
    response = api("post", "/api/v1/builds/", {"configuration": "app", "agent": "agent-1", "number": 7})
    assert response.status_code == 400
    assert response.json() == {"number": [
        "build number 7 of configuration 'app' exists: give another \"number\" or leave it out to take the next one"]}
    assert "--" not in response.content.decode()


def test_run_build_keeps_its_own_words_for_a_taken_number(db):
    taken = BuildFactory(number=7)
    with pytest.raises(services.BuildStartError) as refused:
        services.build_start(configuration=taken.configuration, agent=taken.agent, number=7)
    assert str(refused.value) == (f"build 7 of configuration '{taken.configuration.ident}' already exists; "
                                  "give another --number or leave it out to take the next one")


def test_the_highest_number_used_up_is_told_in_the_callers_words(db):
    highest = BuildFactory(number=2_147_483_647)
    for started_by, words in ((Build.StartedBy.API, 'give a "number" of a build'),
                              (Build.StartedBy.RUN_BUILD, "give a --number of a build")):
        with pytest.raises(services.BuildStartError, match=words):
            services.build_start(configuration=highest.configuration, agent=AgentFactory(), started_by=started_by)


@pytest.mark.parametrize("action, data", [("finish", {"exit_code": 0}), ("heartbeat", None)])
def test_finishing_a_finished_build_says_it_has_already_finished(api, action, data):
    build = BuildFactory(status=Build.Status.SUCCEEDED, finished_at=T0)
    response = api("post", f"/api/v1/builds/{build.pk}/{action}/", data)
    assert response.status_code == 409
    assert response.json() == {"id": build.pk, "detail": f"build {build} has already finished (succeeded)"}
