"""Migration 0011: operations stored before it get the identity of their stored fields, chunk by chunk, so
that an event sent again after the upgrade is still recognised; and the new key holds them all."""

import importlib

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from builds.models import DockerOperation
from builds.operations.records import operation_fields

BEFORE = [("builds", "0010_cleanup_trust")]
T0 = 1_790_000_000_000_000_000


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.mark.django_db(transaction=True)
def test_operations_stored_before_get_the_identity_of_their_fields(monkeypatch):
    monkeypatch.setattr(importlib.import_module("builds.migrations.0011_operation_identity"), "CHUNK", 2)
    old = migrate(BEFORE)
    try:
        project = old.get_model("connections", "Project").objects.create(ident="p", name="P")
        configuration = old.get_model("builds", "BuildConfiguration").objects.create(project=project, ident="c",
                                                                                     name="c")
        agent = old.get_model("builds", "Agent").objects.create(name="a")
        build = old.get_model("builds", "Build").objects.create(configuration=configuration, agent=agent, number=1,
                                                                started_at="2026-01-01T00:00:00Z")
        records = [
            {"time_nano": T0 + i, "event_type": "image", "action": action, "raw_action": action,
             "actor_id": "sha256:" + "a" * 64, "image": "team/app", "tag": str(i), "digest": digest,
             "container_id": "", "container_name": "", "exit_code": None, "attributes": {"name": f"team/app:{i}",
                                                                                        "é": ["nested", 1]}}
            for i, (action, digest) in enumerate([("tag", ""), ("pull", ""), ("push", "sha256:" + "b" * 64),
                                                  ("untag", ""), ("tag", "")])
        ]
        operation = old.get_model("builds", "DockerOperation")
        for record in records:
            operation.objects.create(build=build, agent=agent, time="2026-01-01T00:00:00Z", **record)
    finally:
        migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
    stored = {o.time_nano: o.identity for o in DockerOperation.objects.all()}
    # The identity ingestion gives the same event arriving now: a replay after the upgrade is not doubled.
    assert stored == {r["time_nano"]: operation_fields(r)["identity"] for r in records}
    assert len(set(stored.values())) == 5
