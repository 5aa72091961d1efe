"""DRF's own tokens (rest_framework.authtoken, stored in clear) become hashed API tokens, then their table goes.

A CI system's existing token keeps working: it is found by its SHA-256 digest like any API token.
Runs once, where the old table exists; the clear-text keys are read here and stored nowhere.
"""

import hashlib

from django.db import migrations

OLD_TABLE = "authtoken_token"


def carry_over(apps, schema_editor):
    connection = schema_editor.connection
    if OLD_TABLE not in connection.introspection.table_names():
        return
    api_token = apps.get_model("connections", "ApiToken")
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {quote('key')}, {quote('user_id')}, {quote('created')} FROM {quote(OLD_TABLE)}")
        rows = cursor.fetchall()
    for key, user_id, created in rows:
        digest = hashlib.sha256(key.encode()).hexdigest()
        if not api_token.objects.filter(digest=digest).exists():
            api_token.objects.create(user_id=user_id, name="DRF token (carried over)", digest=digest,
                                     prefix=key[:8], created_at=created)
    schema_editor.execute(f"DROP TABLE {quote(OLD_TABLE)}")


class Migration(migrations.Migration):
    dependencies = [("connections", "0002_members_and_api_tokens")]

    operations = [migrations.RunPython(carry_over, migrations.RunPython.noop, elidable=True)]
