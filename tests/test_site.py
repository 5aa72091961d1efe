"""Site-wide promises: a clean deploy check, the API schema, and the embedded defaults."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[1]


def manage(*args, **env):
    environment = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "CELERY_BROKER_URL")}
    environment.update(DJANGO_SETTINGS_MODULE="dockersupport_site.settings", **env)
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=environment,
                          capture_output=True, text=True)


def test_check_deploy_is_clean_with_production_settings():
    result = manage("check", "--deploy", "--fail-level", "WARNING", DEBUG="0", SECRET_KEY=secrets.token_urlsafe(50),
                    ALLOWED_HOSTS="ci.example.com", DOCKERSUPPORT_ENCRYPTION_KEY=Fernet.generate_key().decode())
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_fails_without_an_encryption_key():
    result = manage("check", "--deploy", DEBUG="0", SECRET_KEY=secrets.token_urlsafe(50),
                    DOCKERSUPPORT_ENCRYPTION_KEY="", ALLOWED_HOSTS="ci.example.com")
    assert result.returncode != 0
    assert "connections.E001" in result.stderr and "DOCKERSUPPORT_ENCRYPTION_KEY is not set" in result.stderr


@pytest.mark.django_db
def test_openapi_schema_is_served(client):
    response = client.get("/api/v1/schema/")
    assert response.status_code == 200
    assert b"openapi" in response.content


def test_without_a_broker_tasks_run_in_process(settings):
    from dockersupport_site.celery import app

    assert settings.CELERY_TASK_ALWAYS_EAGER is (not os.environ.get("CELERY_BROKER_URL"))
    assert app.conf.task_always_eager == settings.CELERY_TASK_ALWAYS_EAGER


def test_every_setting_read_from_the_environment_is_in_the_readme():
    """settings.py says every setting an operator may change is in the README's configuration table."""
    import re

    names = set(re.findall(r'env(?:\.\w+)?\(\s*"([A-Z][A-Z0-9_]+)"', (ROOT / "dockersupport_site" / "settings.py").read_text()))
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration"):readme.index("## Layout")]
    assert names and not {name for name in names if f"`{name}`" not in table}
