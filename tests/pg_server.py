"""A real PostgreSQL server for the tests, started from Debian's ``postgresql`` package.

``postgres_url`` (session scope) runs ``initdb`` and ``pg_ctl`` in a temporary folder — no system
service, no network beyond loopback, a free port — and yields the URL of an empty database
``mmvit`` whose user has a password: host connections authenticate with SCRAM, so the password
in the URL is really used (and the tests can check it never leaks). Use it with
``from tests.pg_server import postgres_url`` in a test module (or ``pytest_plugins``).
``postgres_server`` (the same server) is for tests where the database goes away: ``stop``,
``start`` and ``restart`` it (``pg_ctl -m fast``: clients are disconnected).

``initdb`` refuses to run as root, so as root the server runs as the ``postgres`` user the
package creates (``runuser -u postgres``); as any other user it runs as that user.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

USER, PASSWORD, DATABASE = "postgres", "secret-pw", "mmvit"
MISSING = "PostgreSQL server binaries not found: apt-get install postgresql"


def server_bin() -> Path | None:
    """``/usr/lib/postgresql/<newest version>/bin`` holding initdb and pg_ctl, if installed."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")
             if (Path(p).parent / "pg_ctl").is_file()]

    def version(path: Path) -> tuple:
        name = path.parent.name
        return tuple(int(part) for part in name.split(".") if part.isdigit())

    return max(found, key=version) if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    if shutil.which("runuser") is None:
        pytest.skip("running as root, but runuser is missing to start PostgreSQL as the postgres user")
    try:
        import pwd

        pwd.getpwnam(USER)
    except KeyError:
        pytest.skip("running as root, but there is no `postgres` user to run PostgreSQL as "
                    "(apt-get install postgresql creates it)")
    return ["runuser", "-u", USER, "--", *command]


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(_as_server_user(command), capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


class PostgresServer:
    """A PostgreSQL server in a private folder: ``url`` (user ``postgres`` with a password, database
    ``mmvit``), and ``stop``, ``start`` and ``restart`` for tests where the database goes away."""

    def __init__(self, bin_dir: Path, root: Path) -> None:
        self.bin_dir, self.root, self.data = bin_dir, root, root / "data"
        self.port = _free_port()
        self.url = f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{DATABASE}"
        # pg_ctl restart would reuse these from postmaster.opts; every command passes them anyway.
        self.options = (f"-p {self.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
                        "-c synchronous_commit=off -c full_page_writes=off")

    def _pg_ctl(self, *args: str) -> list[str]:
        return [str(self.bin_dir / "pg_ctl"), "-D", str(self.data), *args]

    def init(self) -> None:
        password_file = self.root / "password"
        password_file.write_text(PASSWORD + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.root, USER)
            shutil.chown(password_file, USER)
        # trust only on the unix socket (inside this private folder); SCRAM over TCP.
        _run([str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", USER, f"--pwfile={password_file}",
              "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8"], "initdb")
        password_file.unlink()
        self.start()
        _run([str(self.bin_dir / "createdb"), "-h", str(self.root), "-p", str(self.port), "-U", USER, DATABASE],
             "createdb")

    def start(self) -> None:
        _run(self._pg_ctl("-l", str(self.root / "server.log"), "-o", self.options, "-w", "-t", "60", "start"),
             "pg_ctl start")

    def stop(self, mode: str = "fast") -> None:
        """``fast``: clients are disconnected (a server shut down for maintenance); ``immediate``: a crash."""
        _run(self._pg_ctl("-m", mode, "-w", "-t", "60", "stop"), "pg_ctl stop")

    def restart(self, mode: str = "fast") -> None:
        _run(self._pg_ctl("-l", str(self.root / "server.log"), "-o", self.options, "-m", mode, "-w", "-t", "60",
                          "restart"), "pg_ctl restart")

    def running(self) -> bool:
        return subprocess.run(_as_server_user(self._pg_ctl("status")), capture_output=True,
                              timeout=60).returncode == 0

    def ensure_running(self) -> None:
        """For a test that stopped the server: the next test of the session finds it up."""
        if not self.running():
            self.start()


_SERVER: PostgresServer | None = None


def _session_server(request: pytest.FixtureRequest) -> PostgresServer:
    """The session's one server, started by whichever of the two fixtures a test asks for first
    (a test module imports only the fixtures it names) and removed at the end of the session."""
    global _SERVER
    if _SERVER is None:
        bin_dir = server_bin()
        if bin_dir is None:
            pytest.skip(MISSING)
        # Not under pytest's tmp_path: its parent is private to root (the server user could not enter
        # it) and a unix socket path must stay under ~107 characters.
        server = PostgresServer(bin_dir, Path(tempfile.mkdtemp(prefix="mmvit-pg-")))

        def remove() -> None:
            global _SERVER
            subprocess.run(_as_server_user(server._pg_ctl("-m", "immediate", "-w", "stop")), capture_output=True,
                           timeout=60)
            shutil.rmtree(server.root, ignore_errors=True)
            _SERVER = None

        try:
            server.init()
        except BaseException:
            remove()
            raise
        request.addfinalizer(remove)
        _SERVER = server
    _SERVER.ensure_running()
    return _SERVER


@pytest.fixture(scope="session")
def postgres_server(request: pytest.FixtureRequest) -> PostgresServer:
    """The server itself: a test may stop, start and restart it, and must leave it running
    (``ensure_running`` in a ``finally``)."""
    return _session_server(request)


@pytest.fixture(scope="session")
def postgres_url(request: pytest.FixtureRequest) -> str:
    """``postgresql://postgres:secret-pw@127.0.0.1:PORT/mmvit`` on a server of its own."""
    return _session_server(request).url
