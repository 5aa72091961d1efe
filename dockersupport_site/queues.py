"""Celery queue names, defined once.

Every queue is the server's: `server` runs event ingestion, registry clean-up and the periodic
sweeps. Build hosts never take work from the broker: their agents pull it over HTTP(S).
"""

import enum


class Queue(enum.StrEnum):
    SERVER = "server"
