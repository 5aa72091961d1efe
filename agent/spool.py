"""Docker operations read from the daemon, kept on disk until the server has acknowledged them.

Each record gets the next sequence number and is appended to `events.jsonl` before anything is
sent; `acked` holds the last number the server acknowledged. A restarted agent sends again what
was not acknowledged, and the server drops what it already has. `position` holds the daemon
time of the last event the agent has dealt with, where its event stream resumes.

Sequence numbers of a new spool start from the clock (microseconds), so they keep growing even
when the agent's folder is wiped: the server tells batches apart by their first number.
"""

import json
import os
import threading
import time
from pathlib import Path

COMPACT_BYTES = 4 * 1024 * 1024  # once everything is acknowledged, a log this large starts over


class Spool:
    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.directory = directory
        self.log_path = directory / "events.jsonl"
        self._changed = threading.Condition()
        self.acked = _read_int(directory / "acked")
        self._pending: list[dict] = []
        last = self.acked
        if self.log_path.exists():
            with open(self.log_path, encoding="utf-8") as handle:
                for line in handle:
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue  # a line cut short by a crash: it was never acknowledged nor complete
                    last = max(last, entry["seq"])
                    if entry["seq"] > self.acked:
                        self._pending.append(entry)
        self.last_seq = last or time.time_ns() // 1000
        if not self.acked:
            # Never acknowledged (the agent stopped before the server's first answer reached it):
            # everything in the log is still to be sent. Counting it as acknowledged would make the
            # server's answer to its batch sent again look old, and the batch would be sent for ever.
            self.acked = self._pending[0]["seq"] - 1 if self._pending else self.last_seq
        self._log = open(self.log_path, "a", encoding="utf-8")
        os.chmod(self.log_path, 0o600)

    # Writing ------------------------------------------------------------------------------------------
    def append(self, record: dict) -> int:
        with self._changed:
            self.last_seq += 1
            entry = {"seq": self.last_seq, **record}
            self._log.write(json.dumps(entry, separators=(",", ":")) + "\n")
            self._log.flush()
            self._pending.append(entry)
            self._changed.notify_all()
            return self.last_seq

    # Sending ------------------------------------------------------------------------------------------
    def batch(self, limit: int, wait: float) -> list[dict]:
        """Up to `limit` records not yet acknowledged, oldest first; waits up to `wait` s for one."""
        with self._changed:
            if not self._pending:
                self._changed.wait(wait)
            return list(self._pending[:limit])

    def ack(self, seq: int) -> None:
        with self._changed:
            if seq <= self.acked:
                return
            self.acked = seq
            self._pending = [entry for entry in self._pending if entry["seq"] > seq]
            _write_int(self.directory / "acked", seq)
            if not self._pending and self.log_path.stat().st_size > COMPACT_BYTES:
                self._log.close()
                self._log = open(self.log_path, "w", encoding="utf-8")
            self._changed.notify_all()

    def wait_acked(self, seq: int, timeout: float) -> bool:
        """True once the server holds every record up to `seq`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.acked < seq:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    @property
    def pending(self) -> int:
        with self._changed:
            return len(self._pending)

    # Where the event stream resumes -------------------------------------------------------------------
    def position(self) -> int | None:
        return _read_int(self.directory / "position") or None

    def save_position(self, nano: int) -> None:
        _write_int(self.directory / "position", nano)

    def close(self) -> None:
        with self._changed:
            self._log.close()


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _write_int(path: Path, value: int) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(str(value))
    os.replace(temporary, path)
