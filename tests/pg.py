"""A real, throw-away PostgreSQL server for the tests.

`PostgresServer` runs Debian's (or any PATH's) `initdb` into a temporary folder, starts the
server on a free loopback port with its unix socket in that folder, and removes everything
on `stop()`. As root, the server binaries run as the `postgres` user (PostgreSQL refuses to
run as root), with the folder handed over to that user.

    with PostgresServer() as server:
        url = server.create_database("cimcoder_test")   # postgresql+psycopg://...

`find_bin_dir()` returns None when no server binaries exist: the fixtures then skip.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

SUPERUSER = "cimcoder"
BIN_ENV = "CIMCODER_PG_BIN"


class PostgresUnavailable(RuntimeError):
    """The server binaries exist but the server could not be started."""


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path)) or (0,)


def find_bin_dir() -> Path | None:
    """Folder holding initdb/pg_ctl: $CIMCODER_PG_BIN, Debian's newest, or the PATH."""
    env = os.environ.get(BIN_ENV)
    if env and (Path(env) / "initdb").is_file():
        return Path(env)
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if debian:
        return Path(debian[-1]).parent
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """A temporary PostgreSQL cluster; use as a context manager or call start()/stop()."""

    def __init__(self, bin_dir: Path | None = None) -> None:
        found = bin_dir or find_bin_dir()
        if found is None:
            raise PostgresUnavailable("no PostgreSQL server binaries (initdb, pg_ctl) found")
        self.bin_dir = found
        self.root: Path | None = None
        self.port: int | None = None
        self._as_user: list[str] = []

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> PostgresServer:
        self.root = Path(tempfile.mkdtemp(prefix="cimcoder-pg-"))
        try:
            self._prepare_user()
            self._run(
                "initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust",
                "-E", "UTF8", "--locale=C", "--no-sync",
            )
            last_error = ""
            for _attempt in range(3):  # another process may grab the free port first
                self.port = _free_port()
                options = (
                    f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                    "-c max_connections=50"
                )
                result = self._run(
                    "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file),
                    "-o", options, "-w", "-t", "60", "start", check=False,
                )
                if result.returncode == 0:
                    logger.info("PostgreSQL test server on 127.0.0.1:%d", self.port)
                    return self
                last_error = result.stdout + result.stderr + self._log_tail()
            raise PostgresUnavailable(f"pg_ctl start failed: {last_error}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.root is None:
            return
        if (self.data_dir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None
        self.port = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- databases -------------------------------------------------------------------
    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL of a database of this server."""
        if self.port is None:
            raise PostgresUnavailable("server not started")
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database `name` (letters, digits, _) and return its SQLAlchemy URL."""
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"invalid database name {name!r}")
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # -- helpers ---------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        assert self.root is not None
        return self.root / "server.log"

    def _prepare_user(self) -> None:
        if os.geteuid() != 0:
            return
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable(
                "running as root and there is no 'postgres' user to run the server as"
            ) from None
        runuser = shutil.which("runuser")
        if runuser is None:
            raise PostgresUnavailable("running as root and runuser is not installed")
        assert self.root is not None
        os.chown(self.root, user.pw_uid, user.pw_gid)
        self._as_user = [runuser, "-u", "postgres", "--"]

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [*self._as_user, str(self.bin_dir / tool), *args]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=120, cwd=self.root, check=False
        )
        if check and result.returncode != 0:
            raise PostgresUnavailable(
                f"{tool} failed ({result.returncode}): {result.stdout}{result.stderr}"
            )
        return result

    def _log_tail(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


def wait_ready(url: str, timeout: float = 30.0) -> None:
    """Block until a connection to `url` succeeds (the server is already up after pg_ctl -w)."""
    import sqlalchemy

    deadline = time.monotonic() + timeout
    engine = sqlalchemy.create_engine(url)
    try:
        while True:
            try:
                with engine.connect() as conn:
                    conn.execute(sqlalchemy.text("SELECT 1"))
                return
            except sqlalchemy.exc.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        engine.dispose()
