"""Settings files from an untrusted hand: size, alias bombs, recursion, nesting and the server's own
variables are clear errors (SettingsFileError, the command exits non-zero) and change nothing."""

import io
import os
import textwrap

import pytest
from django.core.management import CommandError, call_command

from builds.models import BuildConfiguration
from builds.settings_file import SettingsFileError, apply_settings, parse_settings
from connections.models import Connection, Project

pytestmark = pytest.mark.django_db

MAX_FILE_BYTES = 1024 * 1024  # the documented limit: 1 MiB


def errors_of(text, environ=None):
    with pytest.raises(SettingsFileError) as info:
        apply_settings(parse_settings(text, environ or {}))
    return info.value.errors


def alias_bomb(levels=9, width=9):
    """"Billion laughs": each level a list of `width` aliases of the level below. 9 levels of 9 is
    about 530 bytes and 387 million values when walked as a tree (the old parse took about 25 s and
    1.2 GB for 8 levels, nine times that for 9)."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    lines.append(f"projects: [{{id: lol, description: *l{levels - 1}}}]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_naming_its_line():
    text = alias_bomb()
    assert len(text) < 600
    [error] = errors_of(text)
    # The alias that first takes the expansion past the limit: level 6 (9**5 values an alias).
    assert error.startswith("line 6, column 10: aliases expand the file to more than 100000 extra values")
    assert not Project.objects.exists()


def test_the_command_refuses_an_alias_bomb_and_changes_nothing(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(levels=10))
    with pytest.raises(CommandError) as info:
        call_command("apply_settings", str(path))
    assert f"{path}: nothing was changed; 1 error:" in str(info.value)
    assert "aliases expand the file" in str(info.value)
    assert not Project.objects.exists()


def test_a_file_that_reuses_anchors_applies():
    text = textwrap.dedent("""
        projects:
          - id: acme
            connections:
              - &registry {id: local, type: docker-registry, registry: 127.0.0.1:5000, username: ci,
                           password: "${REGISTRY_PASSWORD}"}
              - <<: *registry
                id: mirror
                registry: mirror.example.com
            build_configurations:
              - id: app
                docker_support: &support {login: [local, {connection: mirror, optional: true}],
                                          cleanup_pushed_images: true}
                retention: &keep {keep_last: 10, keep_days: 30}
              - {id: web, docker_support: *support, retention: *keep}
              - {id: api, docker_support: *support, retention: *keep}
    """)
    report = apply_settings(parse_settings(text, {"REGISTRY_PASSWORD": "reg-pass-1"}))
    assert report.created == {"project": 1, "connection": 2, "build configuration": 3}
    mirror = Connection.objects.get(ident="mirror")
    assert (mirror.registry, mirror.username, mirror.password) == ("mirror.example.com", "ci", "reg-pass-1")
    for configuration in BuildConfiguration.objects.all():
        assert (configuration.keep_last, configuration.keep_days, configuration.cleanup_pushed_images) == (10, 30, True)
        assert [(login.connection.ident, login.optional) for login in configuration.logins.all()] == [
            ("local", False), ("mirror", True)]


@pytest.mark.parametrize("text, where", [
    ("a: &x [*x]\n", "line 1, column 8: alias *x is inside the node it refers to (&x at line 1, column 4)"),
    ("projects: &p\n  - id: a\n    subprojects: *p\n",
     "line 3, column 18: alias *p is inside the node it refers to (&p at line 1, column 11)"),
    ("a: &m {b: {c: *m}}\n", "line 1, column 15: alias *m is inside the node it refers to (&m at line 1, column 4)"),
])
def test_a_self_referencing_anchor_is_an_error_naming_where(text, where):
    [error] = errors_of(text)
    assert error == f"{where}: a value cannot contain itself; write the repeated part out"


@pytest.mark.parametrize("text", [
    "projects: " + "[" * 10_000 + "]" * 10_000 + "\n",
    "projects: " + "{a: " * 10_000 + "x" + "}" * 10_000 + "\n",
    "projects:\n" + "".join("  " * depth + "- \n" for depth in range(1, 500)),
])
def test_deep_nesting_is_an_error_not_a_recursion_error(text):
    [error] = errors_of(text)
    assert "nested more than 100 levels deep" in error and error.startswith("line ")


def test_a_deep_project_tree_is_not_too_deep():
    def tree(depth):
        entry = {"id": f"p{depth}"}
        if depth < 30:
            entry["subprojects"] = [tree(depth + 1)]
        return entry

    import yaml

    report = apply_settings(parse_settings(yaml.safe_dump({"projects": [tree(1)]})))
    assert report.created == {"project": 30}


def test_a_file_over_the_size_limit_is_refused_before_parsing():
    text = "projects: []\n" + "#" * MAX_FILE_BYTES + "\n"
    assert errors_of(text) == [
        f"the settings file is {len(text)} bytes; the limit is 1048576 bytes (1 MiB): split it into several "
        "files (apply never deletes what a file does not mention)"
    ]
    # Multi-byte characters count as bytes: 600,000 of them are 1.2 MB.
    [error] = errors_of("projects: []\n# " + "é" * 600_000 + "\n")
    assert "the settings file is 1200016 bytes" in error


def test_a_file_at_the_size_limit_is_read():
    head = "projects: [{id: acme}]\n"
    text = head + "#" * (MAX_FILE_BYTES - len(head) - 1) + "\n"
    assert len(text.encode()) == MAX_FILE_BYTES
    assert parse_settings(text, {}) == {"projects": [{"id": "acme"}]}


def test_the_command_refuses_a_large_file_without_reading_it(tmp_path):
    import tracemalloc

    path = tmp_path / "huge.yaml"
    with open(path, "wb") as handle:
        handle.truncate(64 * 1024 * 1024)  # sparse: 64 MiB of NULs that take no disk space
    tracemalloc.start()
    try:
        with pytest.raises(CommandError) as info:
            call_command("apply_settings", str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"{path}: the settings file is {64 * 1024 * 1024} bytes; the limit is 1048576 bytes" in str(info.value)
    assert peak < 8 * 1024 * 1024  # at most the limit and a byte was read, not the 64 MiB


def test_the_command_reads_standard_input_up_to_the_limit(monkeypatch):
    class Endless:
        """Standard input that never ends; reading it all would never return."""

        def __init__(self):
            self.buffer, self.read_bytes = self, 0

        def read(self, size=-1):
            assert size >= 0, "standard input read without a limit"
            self.read_bytes += size
            return b"#" * size

    stdin = Endless()
    monkeypatch.setattr("sys.stdin", stdin)
    with pytest.raises(CommandError) as info:
        call_command("apply_settings", "-")
    assert "(standard input): the settings file is more than 1048576 bytes; the limit is 1048576 bytes" in (
        str(info.value))
    assert stdin.read_bytes == MAX_FILE_BYTES + 1


SERVER_VARIABLES = [
    "DOCKERSUPPORT_ENCRYPTION_KEY", "DOCKERSUPPORT_DATA_DIR", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND",
    "SECRET_KEY", "DATABASE_URL", "CACHE_URL", "DJANGO_SUPERUSER_PASSWORD", "DJANGO_SETTINGS_MODULE", "secret_key",
]


@pytest.mark.parametrize("name", SERVER_VARIABLES)
def test_a_server_variable_is_refused(name):
    text = f"projects:\n  - id: acme\n    description: before ${{{name}}} after\n"
    # Refused whether or not it is set: the name alone says it is the server's.
    for environ in ({name: "the-server-secret"}, {}):
        assert errors_of(text, environ) == [
            f"projects[0].description: ${{{name}}} is a setting of the server itself and cannot be used in a "
            "settings file; give the value a variable of its own"
        ]
    assert not Project.objects.exists()


def test_variables_of_the_files_own_are_still_read():
    text = "projects:\n  - id: acme\n    description: ${AWS_SECRET_ACCESS_KEY} ${DOCKERSUPPORTED} $${SECRET_KEY}\n"
    apply_settings(parse_settings(text, {"AWS_SECRET_ACCESS_KEY": "aws", "DOCKERSUPPORTED": "yes"}))
    assert Project.objects.get(ident="acme").description == "aws yes ${SECRET_KEY}"


def test_the_encryption_key_never_reaches_the_database_or_the_export(tmp_path):
    key = os.environ["DOCKERSUPPORT_ENCRYPTION_KEY"]  # set by the test settings
    path = tmp_path / "steal.yaml"
    path.write_text("projects:\n  - id: acme\n    description: ${DOCKERSUPPORT_ENCRYPTION_KEY}\n")
    with pytest.raises(CommandError) as info:
        call_command("apply_settings", str(path))
    assert ("projects[0].description: ${DOCKERSUPPORT_ENCRYPTION_KEY} is a setting of the server itself and "
            "cannot be used in a settings file") in str(info.value)
    assert key not in str(info.value)
    out = io.StringIO()
    call_command("export_settings", stdout=out)
    assert key not in out.getvalue()
    assert not Project.objects.exists()


def test_aliases_of_one_long_text_count_by_its_length():
    """A thousand aliases of one 600 KB text would be 600 MB: refused at once, like an alias bomb."""
    text = "a: &a '" + "$$" * 300_000 + "'\nb: [" + ", ".join(["*a"] * 1000) + "]\n"
    with pytest.raises(SettingsFileError, match="aliases expand the file"):
        parse_settings(text)


@pytest.mark.parametrize("value", ["9" * 5000, "2024-13-45 99:99:99"])
def test_a_value_yaml_cannot_make_is_a_clear_error(value):
    with pytest.raises(SettingsFileError, match="not a valid value"):
        parse_settings(f"projects:\n  - id: p\n    description: {value}\n")


def test_a_nul_character_is_refused_naming_where():
    with pytest.raises(SettingsFileError) as refused:
        parse_settings('projects:\n  - id: p\n    name: "a\\0b"\n')
    assert refused.value.errors == ["projects[0].name: contains a NUL character, which no field can hold"]
