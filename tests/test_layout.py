"""The house's walls: the build host's side (agent/) imports nothing of the server, and run_build
loads only the standard library."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER_PACKAGES = {"django", "builds", "connections", "dockersupport_site", "rest_framework", "celery", "boto3",
                   "botocore", "environ"}


def loaded_after(statement: str) -> set[str]:
    script = f"import sys, json; {statement}; print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


def test_the_agent_imports_nothing_of_the_server():
    modules = loaded_after("import agent.cli, agent.main, agent.local, agent.client, agent.cleanup, agent.events")
    assert not modules & SERVER_PACKAGES, modules & SERVER_PACKAGES


def test_run_build_loads_only_the_standard_library():
    modules = loaded_after("import agent.cli, agent.client")
    # _distutils_hack: setuptools' .pth hook in the virtualenv, loaded by Python itself at start-up.
    stdlib = set(sys.stdlib_module_names) | {"agent", "__main__", "builtins", "sys", "_distutils_hack"}
    assert modules <= stdlib, sorted(modules - stdlib)
