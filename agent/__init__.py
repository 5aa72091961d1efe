"""The dockersupport agent: one resident process on each build host, next to its Docker daemon.

It holds only its own token and talks to the server over HTTP(S) (`agent.server_api`); it writes
and erases the builds' Docker client configs, verifies their logins with its daemon, watches the
daemon's events and spools them until the server has them, and frees disk space on its host.
Nothing here imports Django or the server's apps: a build host needs none of the server's
settings. `agent.protocol` holds the messages both sides exchange.
"""

__version__ = "1.0"
