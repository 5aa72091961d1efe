"""Fixtures of the builds app's tests that speak the agent protocol."""

import json

import pytest

from agent import protocol
from builds.agents import services as agent_services

HEADER = {"HTTP_X_DOCKERSUPPORT_PROTOCOL": str(protocol.PROTOCOL_VERSION)}


@pytest.fixture
def call(client, django_capture_on_commit_callbacks):
    """call(method, url, token, data=None, **headers): the agent API as an agent calls it; what a request
    enqueues after its commit (event ingestion) runs, as in a real request."""
    def request(method, url, token, data=None, **extra):
        headers = {**HEADER, "HTTP_AUTHORIZATION": f"Bearer {token}", **extra}
        body = json.dumps(data) if data is not None else None
        with django_capture_on_commit_callbacks(execute=True):
            return getattr(client, method)(url, data=body, content_type="application/json", **headers)

    return request


@pytest.fixture
def agent_token():
    """The token of a new agent named agent-1."""
    _, token, _ = agent_services.agent_token_issue(name="agent-1")
    return token
