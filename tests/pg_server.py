"""A real PostgreSQL server for the tests, started from Debian's ``postgresql`` package.

``postgres_url`` (session scope) runs ``initdb`` and ``pg_ctl`` in a temporary folder — no system
service, no network beyond loopback, a free port — and yields the URL of an empty database
``mmvit`` whose user has a password: host connections authenticate with SCRAM, so the password
in the URL is really used (and the tests can check it never leaks). Use it with
``from tests.pg_server import postgres_url`` in a test module (or ``pytest_plugins``).

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
from typing import Iterator

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


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """``postgresql://postgres:secret-pw@127.0.0.1:PORT/mmvit`` on a server of its own."""
    bin_dir = server_bin()
    if bin_dir is None:
        pytest.skip(MISSING)
    # Not under pytest's tmp_path: its parent is private to root (the server user could not enter
    # it) and a unix socket path must stay under ~107 characters.
    root = Path(tempfile.mkdtemp(prefix="mmvit-pg-"))
    data = root / "data"
    try:
        password_file = root / "password"
        password_file.write_text(PASSWORD + "\n")
        if os.geteuid() == 0:
            shutil.chown(root, USER)
            shutil.chown(password_file, USER)
        # trust only on the unix socket (inside this private folder); SCRAM over TCP.
        _run([str(bin_dir / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={password_file}",
              "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8"], "initdb")
        password_file.unlink()
        port = _free_port()
        options = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-o", options,
              "-w", "-t", "60", "start"], "pg_ctl start")
        try:
            _run([str(bin_dir / "createdb"), "-h", str(root), "-p", str(port), "-U", USER, DATABASE], "createdb")
            yield f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/{DATABASE}"
        finally:
            subprocess.run(_as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                                            "-w", "stop"]), capture_output=True, timeout=60)
    finally:
        shutil.rmtree(root, ignore_errors=True)
