"""The outside systems a connection authenticates against: AWS (boto3) for ECR tokens.

`credentials_for(connection)` is the one entry point: it turns a connection into the username,
password and server address a Docker client logs in with.
"""

from .credentials import RegistryCredentials, RegistryError, credentials_for

__all__ = ["RegistryCredentials", "RegistryError", "credentials_for"]
