"""The harness's base: a server process in a private temporary folder, and the helpers services share."""


import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time


class ServiceError(RuntimeError):
    """A service did not start or did not answer."""


class ServiceUnavailable(ServiceError):
    """The program a service needs is not installed (``scripts/install-test-deps.sh`` installs it)."""


def free_port():
    """A TCP port nobody listens on now, for services that cannot pick their own."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_program(name, *candidates):
    """The path of a program from PATH or the usual Debian places; ServiceUnavailable if none."""
    for path in (shutil.which(name), *candidates):
        if path and os.access(path, os.X_OK):
            return path
    raise ServiceUnavailable(f"{name} is not installed (run scripts/install-test-deps.sh as root)")


def short_tempdir(prefix):
    """A new temporary folder with a short path: unix sockets inside it must stay under 108 bytes."""
    base = tempfile.gettempdir()
    return tempfile.mkdtemp(prefix=prefix, dir=base if len(base) < 40 else "/tmp")


class Service:
    """A server process run in its own temporary folder, with its output kept in ``<root>/<name>.log``."""

    name = "service"
    start_timeout = 30.0
    stop_timeout = 15.0

    def __init__(self):
        self.root = None
        self.process = None

    # Subclasses: find the program (find_program) and write configuration files into self.root,
    # give the command line, say when the service answers, tidy up after the process ended.
    def _prepare(self):
        pass

    def _command(self):
        raise NotImplementedError

    def _ready(self):
        raise NotImplementedError

    def _after_stop(self):
        pass

    def _environment(self):
        """The process's environment; None: this process's own."""
        return None

    @property
    def log_path(self):
        return os.path.join(self.root, f"{self.name}.log") if self.root else None

    @property
    def running(self):
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines=40):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except (OSError, TypeError):
            return ""

    def start(self):
        if self.running:
            return self
        created = self.root is None
        if created:
            self.root = short_tempdir(f"ds-{self.name}-")
            try:
                self._prepare()
            except BaseException:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None
                raise
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self._command(),
                cwd=self.root,  # whatever it writes to its working directory goes away with it
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() kills what it leaves behind
                env=self._environment(),
            )
        deadline = time.monotonic() + self.start_timeout
        last_error = None
        while True:
            if self.process.poll() is not None:
                self._fail(f"exited with code {self.process.returncode}", created)
            try:
                if self._ready():
                    return self
            except Exception as exc:  # not answering yet
                last_error = exc
            if time.monotonic() > deadline:
                self._fail(f"did not answer within {self.start_timeout:.0f}s (last error: {last_error})", created)
            time.sleep(0.1)

    def _fail(self, what, created):
        """Stop what started (removing a folder made by this start) and raise with the log's end."""
        tail = self.log_tail()
        self.stop(keep_data=not created)
        raise ServiceError(f"{self.name} {what}; the end of its log:\n{tail}")

    def stop(self, keep_data=False):
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    pass
            _kill_group(self.process.pid)
            self.process.wait()
            self.process = None
        if self.root is not None:
            self._after_stop()
            if not keep_data:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None
        return self

    def restart(self):
        """Stop and start again with the same port and data (for tests of outages)."""
        self.stop(keep_data=True)
        return self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _kill_group(pid):
    """SIGKILL whatever is left of the process group the service started (its helpers)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
