"""Exact attribution (agent.attribution): which build asked for a daemon event, from the builds' endpoint
journals. The facts here are those agent.docker_proxy writes (tests/e2e/test_docker_proxy_journal.py
checks them against a real daemon); the events are parse_event's records of the daemon's own."""

import json
import time

import pytest

from agent.attribution import Attributor, Claims
from agent.events import BuildWindows, parse_event, podman_event

S = 1_000_000_000
T0 = time.time_ns() - 200 * S  # journals are on the host's clock: requests ended long ago are forgotten


def at(seconds):
    return T0 + seconds * S

ID_A = "a" * 64
ID_B = "b" * 64
IMAGE = "sha256:" + "c" * 64


def event(kind, action, actor, at, **attributes):
    return parse_event({"Type": kind, "Action": action, "timeNano": at,
                        "Actor": {"ID": actor, "Attributes": attributes}})


class Journal:
    """A build's journal file, written fact by fact as the proxy would."""

    def __init__(self, path):
        self.path = path
        self.number = 0
        path.write_text("")

    def fact(self, **fact):
        with open(self.path, "a") as handle:
            handle.write(json.dumps(fact) + "\n")

    def request(self, at, method, path, **query):
        self.number += 1
        self.fact(kind="request", request=self.number, time_nano=at, method=method, path=path,
                  query={k: [v] if isinstance(v, str) else v for k, v in query.items()})
        return self.number

    def end(self, number, at, **response):
        if response:
            self.fact(kind="response", request=number, time_nano=at, status=response.pop("status", 200), **response)
        self.fact(kind="end", request=number, time_nano=at)


@pytest.fixture
def two_builds(tmp_path):
    """Builds 1 and 2 running with their own endpoints, build 3 opted out: (attributor, journal 1, journal 2)."""
    windows = BuildWindows()
    attributor = Attributor(windows)
    journals = {}
    for build in (1, 2):
        journals[build] = Journal(tmp_path / f"{build}.jsonl")
        attributor.follow(build, str(journals[build].path))
        windows.open(build, T0)
    attributor.windows_ = windows
    return attributor, journals[1], journals[2]


def decide(attributor, record, final=False):
    attributor.refresh()
    return attributor.decide(record, final=final)


def test_a_container_belongs_to_the_build_whose_create_answered_its_id_and_so_do_its_follow_on_events(two_builds):
    attributor, one, two = two_builds
    a = one.request(at(10), "POST", "/containers/create")
    b = two.request(at(10), "POST", "/containers/create")
    create = event("container", "create", ID_A, at(11), name="x", image="busybox")
    assert decide(attributor, create) is None  # both creates are in flight: the answer will say whose it is
    one.end(a, at(12), status=201, container=ID_A)
    two.end(b, at(12), status=201, container=ID_B)
    assert decide(attributor, create).builds == [1]
    # An auto-removed container's die and destroy come with no request at all, long after.
    for action in ("start", "die", "destroy"):
        assert decide(attributor, event("container", action, ID_A, at(900), name="x", image="busybox")).builds == [1]
    assert decide(attributor, event("container", "die", ID_B, at(900), name="y", image="busybox")).builds == [2]


def test_a_named_container_is_claimed_while_its_create_is_in_flight_and_a_name_is_not_claimed_for_ever(two_builds):
    attributor, one, two = two_builds
    a = one.request(at(10), "POST", "/containers/create", name="web")
    create = event("container", "create", ID_A, at(11), name="web", image="busybox")
    assert decide(attributor, create).builds == [1]
    one.end(a, at(12), status=201, container=ID_A)
    # Later, build 2 creates another container of the same name: build 1's old request does not claim it.
    b = two.request(at(100), "POST", "/containers/create", name="web")
    two.end(b, at(100), status=201, container=ID_B)
    assert decide(attributor, event("container", "create", ID_B, at(100), name="web", image="busybox")).builds == [2]


def test_exec_and_removal_of_another_builds_container_go_to_the_asker_too(two_builds):
    attributor, one, two = two_builds
    a = one.request(at(10), "POST", "/containers/create", name="db")
    one.end(a, at(10), status=201, container=ID_A)
    x = two.request(at(20), "POST", "/containers/db/exec")
    two.end(x, at(20), status=201, exec="e" * 64)
    s = two.request(at(21), "POST", f"/exec/{'e' * 64}/start")
    assert decide(attributor, event("container", "exec_start: true", ID_A, at(21), name="db")).builds == [1, 2]
    two.end(s, at(22))
    r = two.request(at(30), "DELETE", f"/containers/{ID_A[:12]}", force="1")
    two.end(r, at(30), status=204)
    assert decide(attributor, event("container", "destroy", ID_A, at(30), name="db")).builds == [1, 2]


def test_a_push_goes_only_to_the_build_that_asked_to_push_that_repository_and_tag_with_the_digest_it_reported(
        two_builds):
    attributor, one, two = two_builds
    a = one.request(at(10), "POST", "/images/127.0.0.1:5000/team/app/push", tag="1")
    b = two.request(at(10), "POST", "/images/127.0.0.1:5000/team/app/push", tag="2")
    push = event("image", "push", "127.0.0.1:5000/team/app:1", at(12), name="127.0.0.1:5000/team/app")
    assert decide(attributor, push) is None  # claimed, but its digest comes with the push's last lines
    one.fact(kind="pushed", request=a, time_nano=at(12), tag="1", digest="sha256:" + "d" * 64, size=500)
    decision = decide(attributor, push)
    assert decision.builds == [1] and decision.exact and not decision.owner_uncertain
    assert attributor.pushed_digest(1, push) == "sha256:" + "d" * 64
    two.end(b, at(13))
    # A push nobody asked for (something on the host used the daemon directly) is nobody's, even while
    # another push is in flight: pushes are never given by kind or by time.
    c = two.request(at(20), "POST", "/images/127.0.0.1:5000/other/push", tag="9")
    stranger = event("image", "push", "127.0.0.1:5000/team/app:3", at(21), name="127.0.0.1:5000/team/app")
    assert decide(attributor, stranger) is None
    decision = decide(attributor, stranger, final=True)
    assert decision.builds == [] and decision.unattributed
    two.end(c, at(22))


def test_two_builds_pushing_the_same_tag_both_claim_it(two_builds):
    attributor, one, two = two_builds
    one.request(at(10), "POST", "/images/registry.example/app/push", tag="latest")
    two.request(at(10), "POST", "/images/registry.example/app/push", tag="latest")
    push = event("image", "push", "registry.example/app:latest", at(12), name="registry.example/app")
    assert decide(attributor, push, final=True).builds == [1, 2]  # the server makes its owner uncertain


def test_pulls_and_tags_match_however_docker_spells_the_name(two_builds):
    attributor, one, two = two_builds
    one.request(at(10), "POST", "/images/create", fromImage="busybox", tag="latest")
    two.request(at(10), "POST", "/build", t=["127.0.0.1:5000/app:1", "127.0.0.1:5000/app:latest"])
    assert decide(attributor, event("image", "pull", "docker.io/library/busybox:latest", at(11))).builds == [1]
    assert decide(attributor, event("image", "tag", IMAGE, at(11), name="127.0.0.1:5000/app:latest")).builds == [2]
    two.request(at(12), "POST", f"/images/{IMAGE}/tag", repo="127.0.0.1:5000/app", tag="2")
    assert decide(attributor, event("image", "tag", IMAGE, at(12), name="127.0.0.1:5000/app:2")).builds == [2]


def test_an_untag_goes_to_the_build_whose_deletion_was_in_flight(two_builds):
    attributor, one, two = two_builds
    r = one.request(at(10), "DELETE", "/images/127.0.0.1:5000/app:1")
    untag = event("image", "untag", IMAGE, at(10), name=IMAGE)
    assert decide(attributor, untag) is None
    one.end(r, at(10), untagged=["127.0.0.1:5000/app:1"], deleted=[IMAGE])
    assert decide(attributor, untag).builds == [1]
    # An untag of a deletion whose answer names no ID (other tags kept the image) goes by the kind of request.
    r = two.request(at(20), "DELETE", "/images/127.0.0.1:5000/app:2")
    two.end(r, at(20), untagged=["127.0.0.1:5000/app:2"])
    assert decide(attributor, event("image", "untag", IMAGE, at(20), name=IMAGE), final=True).builds == [2]


def test_a_classic_builds_intermediate_containers_are_its_own(two_builds):
    attributor, one, two = two_builds
    b = one.request(at(10), "POST", "/build", t=["app:1"])
    two.request(at(10), "POST", "/containers/create")  # build 2 runs a container meanwhile
    create = event("container", "create", ID_A, at(11), name="focused_fermi", image=IMAGE)
    assert decide(attributor, create) is None
    one.fact(kind="container", request=b, time_nano=at(11), container=ID_A[:12])
    assert decide(attributor, create).builds == [1]
    # A quiet build (-q) prints no "Running in": its containers go to the build whose build request was in
    # flight, never to one that only created containers of its own.
    quiet = event("container", "create", ID_B, at(12), name="quiet_one", image=IMAGE)
    assert decide(attributor, quiet, final=True).builds == [1]


def test_with_no_build_asking_an_event_goes_by_time_to_builds_without_their_own_endpoint(two_builds, tmp_path):
    attributor, one, two = two_builds
    attributor.windows_.open(3, T0)  # build 3 opted out: time-based
    stray = event("image", "tag", IMAGE, at(10), name="somewhere/else:1")
    decision = decide(attributor, stray, final=True)
    assert decision.builds == [3] and decision.owner_uncertain and not decision.exact


def test_an_event_before_any_request_is_decided_at_once_and_a_build_without_windows_takes_nothing(tmp_path):
    windows = BuildWindows()
    attributor = Attributor(windows)
    journal = Journal(tmp_path / "1.jsonl")
    attributor.follow(1, str(journal.path))
    windows.open(1, at(5))
    early = event("image", "tag", IMAGE, at(4), name="x:1")
    assert decide(attributor, early).builds == []  # no build ran then (dropped by the stream)
    stray = event("image", "tag", IMAGE, at(6), name="x:1")
    decision = decide(attributor, stray)  # no request of build 1 in flight: nothing to wait for
    assert decision.builds == [] and decision.unattributed


def test_a_journal_is_read_line_by_line_as_it_grows_and_bad_lines_are_skipped(tmp_path):
    claims = Claims()
    path = tmp_path / "j.jsonl"
    path.write_bytes(b'{"kind":"listening","pid":1}\nnot json\n{"kind":"request","request":1,"time_nano":5,"meth')
    windows = BuildWindows()
    attributor = Attributor(windows)
    attributor.follow(7, str(path))
    claims = attributor.claims(7)
    assert claims.listening and not claims.open
    with open(path, "ab") as handle:
        handle.write(b'od":"POST","path":"/containers/create","query":{}}\n')
    attributor.refresh()
    assert list(claims.open) == [1]


def test_requests_ended_long_before_the_events_read_are_forgotten_and_those_in_flight_kept(tmp_path):
    windows = BuildWindows()
    attributor = Attributor(windows)
    journal = Journal(tmp_path / "1.jsonl")
    attributor.follow(1, str(journal.path))
    for second in range(100):
        journal.end(journal.request(at(second), "POST", "/images/create", fromImage="app", tag=str(second)), at(second))
    still = journal.request(at(0), "GET", "/events")  # a request in flight all along
    attributor.refresh(horizon_nano=at(99 + 120))  # two minutes after the last one ended
    claims = attributor.claims(1)
    assert [r.references for r in claims.ended] == [{("docker.io", "library/app", "99")}]
    assert list(claims.open) == [still]


def test_a_push_only_asked_for_is_not_owned_and_one_the_daemon_reported_is(two_builds):
    """A build that keeps a push request 'in flight' that never runs (pipelined behind a blocking one, or
    refused) does not own a push another build made; and alone, it makes the push's owner uncertain."""
    attributor, one, two = two_builds
    one.request(at(10), "POST", "/images/registry.example/app/push", tag="1")  # never answered
    b = two.request(at(10), "POST", "/images/registry.example/app/push", tag="1")
    two.fact(kind="pushed", request=b, time_nano=at(11), tag="1", digest="sha256:" + "d" * 64, size=9)
    two.end(b, at(11))
    push = event("image", "push", "registry.example/app:1", at(11), name="registry.example/app")
    decision = decide(attributor, push, final=True)
    assert decision.builds == [2] and not decision.owner_uncertain
    alone = event("image", "push", "registry.example/app:1", at(20), name="registry.example/app")
    one.request(at(19), "POST", "/images/registry.example/app/push", tag="1")
    decision = decide(attributor, alone, final=True)
    assert decision.builds == [1] and decision.owner_uncertain


def test_while_a_build_without_an_endpoint_runs_it_shares_every_event_and_the_owner_is_uncertain(two_builds):
    attributor, one, two = two_builds
    attributor.windows_.open(3, T0)  # opted out: it could have done anything, through the daemon's socket
    p = one.request(at(10), "POST", "/images/registry.example/app/push", tag="1")
    one.fact(kind="pushed", request=p, time_nano=at(11), tag="1", digest="sha256:" + "d" * 64, size=9)
    one.end(p, at(11))
    decision = decide(attributor, event("image", "push", "registry.example/app:1", at(11)), final=True)
    assert decision.builds == [1, 3] and decision.owner_uncertain


def test_naming_another_builds_container_claims_only_the_events_its_request_causes(two_builds):
    attributor, one, two = two_builds
    a = one.request(at(10), "POST", "/containers/create", name="db")
    one.end(a, at(10), status=201, container=ID_A)
    two.request(at(20), "POST", "/containers/db/wait")  # waits for ever: causes nothing
    assert decide(attributor, event("container", "die", ID_A, at(30), name="db"), final=True).builds == [1]
    k = two.request(at(40), "POST", f"/containers/{ID_A[:12]}/kill")
    two.end(k, at(40))
    assert decide(attributor, event("container", "die", ID_A, at(40), name="db"), final=True).builds == [1, 2]


def test_a_running_in_line_claims_a_container_only_while_its_build_runs(two_builds):
    attributor, one, two = two_builds
    b = one.request(at(10), "POST", "/build", t=["app:1"])
    one.fact(kind="container", request=b, time_nano=at(11), container=ID_B[:12])  # printed by a RUN step?
    one.end(b, at(12))
    two.end(two.request(at(5), "POST", "/containers/create"), at(5), status=201, container=ID_B)
    assert decide(attributor, event("container", "die", ID_B, at(60), name="web"), final=True).builds == [2]


def test_a_restarted_endpoint_ends_what_its_dead_predecessor_had_in_flight(two_builds):
    attributor, one, two = two_builds
    one.request(at(10), "POST", "/images/registry.example/app/push", tag="1")  # the endpoint then died
    one.fact(kind="listening", pid=4242, time_nano=at(20))
    push = event("image", "push", "registry.example/app:1", at(3600), name="registry.example/app")
    decision = decide(attributor, push)
    assert decision.builds == [] and decision.unattributed


def podman(kind, action, actor, at, **attributes):
    """A Podman event (its Docker-compatible API's stream) as the agent reads it (agent.events.podman_event)."""
    return parse_event(podman_event({"Type": kind, "Action": action, "timeNano": at,
                                     "Actor": {"ID": actor, "Attributes": attributes}}))


def test_the_podman_clis_libpod_requests_claim_their_events_as_dockers_do(two_builds):
    """What Debian's podman 4.3 asked through a build's endpoint (CONTAINER_HOST) for pull, build, run --rm, tag,
    push and rmi, journaled by agent.docker_proxy (the /v4.3.1 prefix stripped, /libpod kept)."""
    attributor, one, two = two_builds
    two.request(at(10), "POST", "/containers/create")  # build 2 runs a container meanwhile: nothing of build 1's
    p = one.request(at(10), "POST", "/libpod/images/pull", reference="localhost:5000/base:1")
    assert decide(attributor, podman("image", "pull", "", at(11), name="localhost:5000/base:1")).builds == [1]
    one.end(p, at(11))
    b = one.request(at(20), "POST", "/libpod/build", t=["localhost:5000/app:1"], q="1")
    built = {**podman("image", "build", "", at(21), name="f" * 64), "image": "localhost:5000/app", "tag": "1"}
    assert decide(attributor, built).builds == [1]  # events.py names Podman's build by its tags
    one.end(b, at(21))
    c = one.request(at(30), "POST", "/libpod/containers/create")
    create = podman("container", "create", ID_A, at(31), name="run-1", image="localhost:5000/app:1")
    assert decide(attributor, create) is None  # the answer will say whose it is
    one.end(c, at(31), status=201, container=ID_A)
    assert decide(attributor, create).builds == [1]
    for action in ("start", "died", "remove"):  # run --rm: Podman removes it, no request asks for it
        decision = decide(attributor, podman("container", action, ID_A, at(40), name="run-1", exitCode="0"))
        assert decision.builds == [1] and decision.exact, action
    t = one.request(at(50), "POST", "/libpod/images/localhost:5000/app:1/tag", repo="localhost:5000/app", tag="2")
    assert decide(attributor, podman("image", "tag", "f" * 64, at(50), name="localhost:5000/app:2")).builds == [1]
    one.end(t, at(50), status=201)
    s = one.request(at(60), "POST", "/libpod/images/localhost:5000/app:2/push", destination="localhost:5000/app:2")
    push = podman("image", "push", "f" * 64, at(61), name="localhost:5000/app:2")
    assert decide(attributor, push) is None  # a digest may still come with its last line
    one.fact(kind="pushed", request=s, time_nano=at(62), tag="2", digest="sha256:" + "d" * 64, size=None)
    one.end(s, at(62))
    decision = decide(attributor, push)
    assert decision.builds == [1] and decision.exact and not decision.owner_uncertain
    assert attributor.pushed_digest(1, push) == "sha256:" + "d" * 64
    # rmi: libpod's answer names the deleted image's ID without sha256:, as its events do not
    r = one.request(at(70), "DELETE", "/libpod/images/remove", force="false")
    one.end(r, at(70), untagged=["localhost:5000/app:2"], deleted=["f" * 64])
    two.request(at(70), "DELETE", "/images/other:1")  # another build's deletion in flight then
    assert decide(attributor, podman("image", "remove", "f" * 64, at(70), name="localhost:5000/app:2"),
                  final=True).builds == [1]


def test_a_libpod_push_names_its_destination_and_one_without_a_digest_is_the_askers_of_uncertain_ownership(
        two_builds):
    attributor, one, two = two_builds
    # `podman push app:1 localhost:5000/other:9`: the registry's tag is the destination's, not the path's
    s = one.request(at(10), "POST", "/libpod/images/localhost:5000/app:1/push", destination="localhost:5000/other:9")
    two.request(at(10), "POST", "/libpod/images/localhost:5000/app:1/push", destination="localhost:5000/app:1")
    push = podman("image", "push", "f" * 64, at(11), name="localhost:5000/other:9")
    one.end(s, at(12))  # Podman 4.3's libpod push says no digest
    decision = decide(attributor, push, final=True)
    assert decision.builds == [1] and decision.exact and decision.owner_uncertain
    assert attributor.pushed_digest(1, push) == ""
