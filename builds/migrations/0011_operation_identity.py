"""Operations are de-duplicated by their full identity (a SHA-256 of their stored fields), not by
(build, time, type, action, actor), which merged two genuine events of one clock tick; and records
that cannot be stored are set aside.

Existing rows get their identity from their stored fields: read in chunks, hashed in Python (the
same canonical JSON as builds.models.operation_identity, copied here as it is today) and written back
(on PostgreSQL: COPY into a temporary table, then one UPDATE). Old rows never collide: the old key
was stricter.
"""

import hashlib
import json

import django.db.models.deletion
from django.db import migrations, models

CHUNK = 5_000
IDENTITY_FIELDS = ("time_nano", "event_type", "action", "raw_action", "actor_id", "image", "tag", "digest",
                   "container_id", "container_name", "exit_code", "attributes")


def operation_identity(row: dict) -> str:
    """builds.operations.records.operation_identity as of this migration."""
    values = [row[name] for name in IDENTITY_FIELDS]
    if row["action"] == "push":
        values[IDENTITY_FIELDS.index("digest")] = ""
    return hashlib.sha256(json.dumps(values, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _chunks(rows):
    """(pk, identity) of every row, a chunk at a time, read by primary key."""
    last = 0
    while chunk := list(rows.filter(pk__gt=last)[:CHUNK]):
        last = chunk[-1]["pk"]
        yield [(row["pk"], operation_identity(row)) for row in chunk]


def identities_fill(apps, schema_editor):
    connection = schema_editor.connection
    operation = apps.get_model("builds", "DockerOperation")
    table = schema_editor.quote_name(operation._meta.db_table)
    rows = operation.objects.using(connection.alias).order_by("pk").values("pk", *IDENTITY_FIELDS)
    with connection.cursor() as cursor:
        if connection.vendor != "postgresql":
            for chunk in _chunks(rows):
                cursor.executemany(f"UPDATE {table} SET identity = %s WHERE id = %s", [(i, pk) for pk, i in chunk])
            return
        # COPY into a temporary table, then one UPDATE: an UPDATE a chunk takes about twice as long.
        cursor.execute("CREATE TEMPORARY TABLE operation_identities (id bigint, identity varchar(64)) ON COMMIT DROP")
        for chunk in _chunks(rows):
            with cursor.cursor.copy("COPY operation_identities (id, identity) FROM STDIN") as copy:
                for row in chunk:
                    copy.write_row(row)
        cursor.execute(f"UPDATE {table} AS o SET identity = i.identity FROM operation_identities AS i"
                       " WHERE o.id = i.id")
        cursor.execute("DROP TABLE operation_identities")


class Migration(migrations.Migration):

    dependencies = [
        ("builds", "0010_cleanup_trust"),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="dockeroperation",
            name="docker_operation_once_per_build",
        ),
        migrations.AddField(
            model_name="dockeroperation",
            name="identity",
            field=models.CharField(
                default="", editable=False, max_length=64,
                help_text="SHA-256 of the event's stored fields and attributes (operation_identity): the same "
                          "event sent again has the same one; two events of one clock tick (two tags of an image) "
                          "do not.",
            ),
            preserve_default=False,
        ),
        migrations.RunPython(identities_fill, migrations.RunPython.noop, elidable=False),
        migrations.AddConstraint(
            model_name="dockeroperation",
            constraint=models.UniqueConstraint(fields=("build", "identity"),
                                               name="docker_operation_identity_once_per_build"),
        ),
        migrations.CreateModel(
            name="SetAsideRecord",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("first_seq", models.BigIntegerField(help_text="The first sequence number of the batch it came in.")),
                ("record", models.JSONField(blank=True, null=True,
                                            help_text="The record as the agent sent it, without the builds' "
                                                      "secrets.")),
                ("error", models.TextField(help_text="Why it was not stored (the database's answer), without "
                                                     "secrets.")),
                ("at", models.DateTimeField()),
                ("agent", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE,
                                            related_name="set_aside_records", to="builds.agent")),
            ],
            options={
                "verbose_name": "set-aside event record",
                "ordering": ["-at", "-pk"],
                "indexes": [models.Index(fields=["agent", "first_seq"], name="builds_seta_agent_i_bf3a0a_idx")],
            },
        ),
    ]
