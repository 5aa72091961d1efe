"""The REST API's authentication by a user's API token: `Authorization: Token dsu_...`; and the bearer tokens'
header, which agents, builds and builds' commands send (builds/agent_api.py, builds/reported/api.py).

The keyword is DRF's ("Token"), so clients written for DRF's tokens keep working. The request then
acts for the token's user, narrowed by the token (connections/roles.py reads `user.api_token`).
"""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication, get_authorization_header

from . import services


class ApiTokenAuthentication(TokenAuthentication):
    """DRF's header parsing (and its answers to a malformed header); our hashed, limited tokens."""

    keyword = "Token"

    def authenticate_credentials(self, key):
        try:
            token = services.api_token_authenticate(key)
        except services.ApiTokenRefused as exc:
            raise exceptions.AuthenticationFailed(str(exc)) from None
        if token is None:
            raise exceptions.AuthenticationFailed(f"this API token is not valid; {services.MAKE_ONE}")
        user = token.user
        user.api_token = token  # roles (and so every permission) are narrowed by the token
        return user, token


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "connections.authentication.ApiTokenAuthentication"
    name = "apiToken"
    priority = 1  # before drf-spectacular's own scheme for DRF's TokenAuthentication, our base class

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey", "in": "header", "name": "Authorization",
            "description": (
                "A user's API token after the keyword `Token`: `Authorization: Token dsu_...`. Made in the admin "
                "(API tokens) or with `python manage.py drf_create_token USER`; it acts for its user, limited to "
                "the projects it names and to reading when it is read-only, until it expires or is revoked."
            ),
        }


def bearer_token(request) -> str | None:
    """The token of `Authorization: Bearer <token>` (agents', builds' and report tokens); None for any other header."""
    parts = get_authorization_header(request).split()
    if len(parts) != 2 or parts[0].lower() != b"bearer":
        return None
    try:
        return parts[1].decode()
    except UnicodeDecodeError:
        return None
