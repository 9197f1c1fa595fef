"""A throwaway PostgreSQL cluster for the central's tests: ``initdb``/``pg_ctl`` in a temp dir.

``postgres`` (session-scoped) starts one cluster on a free loopback port and removes it at the
end of the session, even when tests fail; ``pg_url`` gives each test a fresh database on it.
``initdb`` refuses to run as root, so as root the cluster belongs to the ``postgres`` user
(``runuser``) in a folder that user owns. Without PostgreSQL's binaries the fixtures skip,
except under ``CI=true`` where they fail. conftest.py registers the fixtures.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional

import pytest
from broker import free_port

BIN_GLOB = "/usr/lib/postgresql/*/bin"


def pg_bin() -> Optional[Path]:
    """The newest Debian PostgreSQL bin folder with initdb, or None."""
    found = sorted(glob.glob(BIN_GLOB), key=lambda p: int(Path(p).parent.name), reverse=True)
    for folder in found:
        if os.access(os.path.join(folder, "initdb"), os.X_OK):
            return Path(folder)
    exe = shutil.which("initdb")
    return Path(exe).parent if exe else None


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@dataclass
class Cluster:
    """One running PostgreSQL cluster on 127.0.0.1."""

    bin: Path
    root: Path
    port: int
    as_user: List[str]

    @property
    def data(self) -> Path:
        return self.root / "data"

    def run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL tool as the cluster's owner."""
        return subprocess.run([*self.as_user, str(self.bin / tool), *args], capture_output=True,
                              text=True, timeout=120, cwd=self.root)

    def url(self, database: str = "postgres") -> str:
        """A libpq URL for ``database``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def start(self) -> None:
        """initdb and pg_ctl start; raises RuntimeError with the tool's output on failure."""
        init = self.run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                        "--no-sync", "-E", "UTF8")
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr.strip()[-500:]}")
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=200")
        start = self.run("pg_ctl", "-D", str(self.data), "-o", options, "-l",
                         str(self.root / "postgres.log"), "-w", "-t", "60", "start")
        if start.returncode != 0:
            log = (self.root / "postgres.log")
            raise RuntimeError(f"pg_ctl start failed: {start.stderr.strip()[-300:]} "
                               f"{log.read_text()[-500:] if log.exists() else ''}")

    def stop(self) -> None:
        """Stop at once (the data is thrown away)."""
        self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")


def start_cluster() -> Cluster:
    """A started cluster in a new temp folder (owned by ``postgres`` when run as root)."""
    folder = pg_bin()
    if folder is None:
        raise FileNotFoundError("PostgreSQL not installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="edgewatch-pg-"))
    as_user: List[str] = []
    if os.getuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    cluster = Cluster(folder, root, free_port(), as_user)
    try:
        cluster.start()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return cluster


def remove_cluster(cluster: Cluster) -> None:
    """Stop the cluster and remove its folder."""
    try:
        cluster.stop()
    finally:
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """A PostgreSQL cluster for the whole session, removed at the end even on failure."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg not installed (pip install 'edgewatch[central]')")
    try:
        cluster = start_cluster()
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        _unavailable(f"cannot start PostgreSQL: {exc}")
        raise  # unreachable: _unavailable skips or fails
    try:
        yield cluster
    finally:
        remove_cluster(cluster)


@pytest.fixture
def pg_url(postgres: Cluster) -> str:
    """A fresh database on the session's cluster."""
    return postgres.create_database()
