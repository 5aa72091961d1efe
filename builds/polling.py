"""Waiting on the database for a state another process writes (an agent's job, an ingested batch)."""

import time


def wait_until(check, *, timeout: float, until=True) -> bool:
    """Calls check() until it returns `until` (True: within `timeout` seconds), often at first, then less."""
    deadline = time.monotonic() + timeout
    pause = 0.02
    while check() != until:
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 1.5, 0.5)
    return True
