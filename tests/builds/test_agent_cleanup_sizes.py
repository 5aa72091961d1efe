"""Sizes for Free Disk Space are bounded to what a disk can be: a bad one is an error naming it,
before any image is removed and before any record is written."""

import pytest
from django.core.management import CommandError, call_command

from agent.protocol import MAX_SIZE
from builds.cleanup.agent import AgentCleanupError, parse_size
from builds.models import AgentCleanup
from tests.factories import AgentFactory


def test_the_largest_size_is_an_exbibyte():
    assert MAX_SIZE == 2**60
    assert parse_size("1048576T") == MAX_SIZE
    assert parse_size(str(MAX_SIZE)) == MAX_SIZE


@pytest.mark.parametrize("text", ["99999999T", "1048577T", str(MAX_SIZE + 1), "9" * 400 + "T", "9" * 400])
def test_a_size_larger_than_any_disk_names_itself_and_the_limit(text):
    with pytest.raises(AgentCleanupError) as error:
        parse_size(text)
    assert str(error.value) == f"'{text}' is more than any disk holds: at most 1048576T (1152921504606846976 bytes)"


@pytest.mark.parametrize("text", ["0", "0G", "0.0T", "0.0000001K"])
def test_a_size_of_nothing_names_itself(text):
    with pytest.raises(AgentCleanupError) as error:
        parse_size(text)
    assert str(error.value) == f"'{text}' is no space at all: give a size of at least 1 byte (like 500M, 20G, 1T)"


@pytest.mark.parametrize("text", ["-1G", "-0", "²G"])
def test_a_negative_or_strange_size_is_not_a_size(text):
    with pytest.raises(AgentCleanupError, match=f"^'{text}' is not a size"):
        parse_size(text)


def test_the_smallest_sizes_are_one_byte():
    assert parse_size("1") == 1
    assert parse_size("0.001K") == 1


@pytest.mark.django_db
def test_free_disk_space_refuses_a_size_beyond_any_disk_and_records_nothing():
    agent = AgentFactory()
    with pytest.raises(CommandError) as error:
        call_command("free_disk_space", agent=agent.name, required="99999999T")
    assert str(error.value) == ("--required 99999999T: '99999999T' is more than any disk holds: "
                                "at most 1048576T (1152921504606846976 bytes)")
    assert not AgentCleanup.objects.exists()


