"""The admin of builds, a module per subject; importing this package registers them all."""

from . import agents, builds, cleanup, configurations, operations

__all__ = ["agents", "builds", "cleanup", "configurations", "operations"]
