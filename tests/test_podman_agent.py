"""An agent on Podman (--engine podman): Podman's events (its Docker-compatible API, Podman 4.3 as Debian 12 ships
it) read as Docker's — the events below are what Debian's podman sent for `docker run --rm`, tag, push, pull, build
and rmi (tests/e2e/test_podman.py runs them for real) — and the engine setting."""

from agent.events import parse_event, podman_event

IMAGE_ID = "262179d551644aa5b1b9a77df831178e81c104dab1fcefc627043bcaf20166fe"
BUILT_ID = "fc79d51b8fb8707188e996eea45a1c550da1fa38bef527642a3a6504e69229b8"
CONTAINER = "a63f83c6ed526cd8ba81db15d1c20603382969aa2d36c83d90070f992bd90cee"
T = 1795869747901235724


def container(action, **attributes):
    return {"status": action, "id": CONTAINER, "from": "localhost/busybox:test", "Type": "container",
            "Action": action, "Actor": {"ID": CONTAINER, "Attributes": {
                "containerExitCode": "0", "image": "localhost/busybox:test", "name": "c2", "podId": "", **attributes}},
            "scope": "local", "time": T // 10 ** 9, "timeNano": T}


def image(action, actor_id, name):
    return {"status": action, **({"id": actor_id} if actor_id else {}), "Type": "image", "Action": action,
            "Actor": {"ID": actor_id, "Attributes": {"containerExitCode": "0", "image": "", "name": name, "podId": ""}},
            "scope": "local", "time": T // 10 ** 9, "timeNano": T}


def read(raw):
    translated = podman_event(raw)
    return None if translated is None else parse_event(translated)


def test_a_containers_life_reads_as_dockers_with_its_exit_code_on_die_alone():
    records = [read(container(action)) for action in ("create", "init", "attach", "start")]
    assert [r and r["action"] for r in records] == ["create", None, None, "start"]
    assert records[0]["container_id"] == CONTAINER and records[0]["container_name"] == "c2"
    assert (records[0]["image"], records[0]["tag"], records[0]["exit_code"]) == ("localhost/busybox", "test", None)
    died = read(container("die", containerExitCode="3", exitCode="3"))
    assert (died["action"], died["exit_code"]) == ("die", 3)
    assert "containerExitCode" not in died["attributes"] and "podId" not in died["attributes"]
    assert read(container("remove"))["action"] == "destroy"  # Podman's name for Docker's destroy
    assert read(container("died", containerExitCode="1", exitCode="1"))["action"] == "die"


def test_image_events_name_their_reference_and_their_image_id_as_docker_does():
    push = read(image("push", IMAGE_ID, "127.0.0.1:5055/bb:1"))
    assert (push["action"], push["image"], push["tag"], push["digest"]) == ("push", "127.0.0.1:5055/bb", "1", "")
    assert push["attributes"]["image_id"] == f"sha256:{IMAGE_ID}"
    pull = read(image("pull", "", "127.0.0.1:5055/bb:1"))
    assert (pull["action"], pull["image"], pull["tag"]) == ("pull", "127.0.0.1:5055/bb", "1")
    tag = read(image("tag", IMAGE_ID, "127.0.0.1:5055/bb:2"))
    assert (tag["action"], tag["image"], tag["tag"]) == ("tag", "127.0.0.1:5055/bb", "2")
    assert tag["attributes"]["image_id"] == f"sha256:{IMAGE_ID}" and tag["actor_id"] == f"sha256:{IMAGE_ID}"
    for action, expected in (("untag", "untag"), ("delete", "delete"), ("remove", "delete")):
        record = read(image(action, IMAGE_ID, "127.0.0.1:5055/bb:2"))
        assert (record["action"], record["image"], record["tag"]) == (expected, "127.0.0.1:5055/bb", "2")
    built = read(image("build", "", BUILT_ID))
    assert (built["action"], built["image"], built["attributes"]["image_id"]) == ("build", "", f"sha256:{BUILT_ID}")


def test_a_pull_of_podmans_own_local_names_is_no_pull_from_a_registry():
    # `podman run localhost/x` reports a "pull" of the image it found in its own storage
    assert read(image("pull", "", "localhost/busybox:test")) is None
    assert read(image("pull", "", "")) is None
    assert read(image("push", IMAGE_ID, "")) is None
    assert read({"Type": "volume", "Action": "create", "Actor": {"ID": "v"}, "timeNano": T}) is None


def test_dockers_own_events_are_not_read_as_podmans():
    # parse_event alone reads Docker's: a pull names its reference as the actor
    record = parse_event({"Type": "image", "Action": "pull", "Actor": {"ID": "127.0.0.1:5055/bb:1", "Attributes": {
        "name": "127.0.0.1:5055/bb"}}, "timeNano": T})
    assert (record["image"], record["tag"]) == ("127.0.0.1:5055/bb", "1")


def test_the_agent_refuses_an_engine_it_does_not_know(tmp_path):
    import os
    import subprocess
    import sys

    token = tmp_path / "token"
    token.write_text("t")
    token.chmod(0o600)
    environment = {**os.environ, "DOCKERSUPPORT_ENGINE": "rkt", "DOCKERSUPPORT_AGENT_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "manage.py", "agent", "--server", "http://127.0.0.1:9",
                             "--token-file", str(token)], env=environment, capture_output=True, text=True,
                            timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 2
    assert "DOCKERSUPPORT_ENGINE=rkt: choose one of docker, podman" in result.stderr
