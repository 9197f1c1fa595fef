"""The database file: connections, what a failed write means, and who holds it.

This module holds no SQL for the tables (that is :mod:`agent.store`); it opens the file,
explains faults (``classify``: "free space" only when space is short) and locks it.

Only the agent writes its database while it runs.
Only the agent writes its database while it runs. The running :class:`~agent.store.Store`
holds an exclusive ``flock`` on ``<db path>.lock`` for its whole life and writes into that
file where its control socket listens (``{"pid", "control_socket"}``). The device CLI reads
it to find the agent, and writes the database itself only after taking the same lock,
so that an agent starting meanwhile waits for it instead of racing it.

Why a separate file and not the database itself: SQLite uses POSIX record locks on the
database file, and closing *any* descriptor of that file in a process drops all of that
process's record locks; a second descriptor opened for ``flock`` would be a trap for the
CLI, which also reads the database. On NFS, ``flock`` is emulated with record locks and
would collide with SQLite's. A sidecar file has neither problem; the kernel releases the
lock when the process dies, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sqlite3
import time
from typing import Any, Dict, Optional, Tuple

from .errors import StoreError

BUSY_TIMEOUT_S = 5.0
LOCK_WAIT_S = 10.0
_POLL_S = 0.05


def _mount_point(path: str) -> str:
    path = os.path.dirname(os.path.abspath(path))
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


def readonly_fix(path: str) -> str:
    """How to fix a database that cannot be written."""
    return f"is {_mount_point(path)} mounted read-only? else make " \
           f"{os.path.dirname(os.path.abspath(path))} writable by this user"


def classify(exc: sqlite3.Error, path: str) -> Tuple[str, str]:
    """(kind, how to fix) for a failed write; "check free space" only when space is short."""
    msg = str(exc).lower()
    if "full" in msg:
        return "full", f"free space on {_mount_point(path)} or lower [store] max_db_mb"
    if "readonly" in msg or "read-only" in msg:
        return "readonly", readonly_fix(path)
    if "i/o" in msg:
        return "io", f"check the storage device holding {_mount_point(path)}"
    if "malformed" in msg or "not a database" in msg:
        return "corrupt", f"stop edgewatch and move {path} aside; it is recreated on start"
    if "locked" in msg or "busy" in msg:
        return "locked", "another process holds a write lock; stop it"
    return "other", f"check {path}"


def connect_writer(path: str) -> sqlite3.Connection:
    """The writer's connection (legacy transaction control; the writer BEGINs explicitly)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise StoreError(f"cannot open database: {path} (create {directory} or set [store] path)")
    try:
        # Legacy transaction control is what sqlite-utils expects; we BEGIN explicitly.
        return sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open database: {path}: {exc} (check [store] path)") from exc


def check_writable(path: str) -> None:
    """StoreError naming the fix when the database or its directory cannot be written."""
    directory = os.path.dirname(os.path.abspath(path))
    for where in (path, directory):
        if os.path.exists(where) and not os.access(where, os.W_OK):
            raise StoreError(f"database is read-only: {path} ({readonly_fix(path)})")


def connect_readonly(path: str) -> sqlite3.Connection:
    """A read-only connection (rows as sqlite3.Row); StoreError when the file is missing."""
    if not os.path.exists(path):
        raise StoreError(f"database not found: {path} (point at it with --db FILE, or --config "
                         "FILE for its [store] path; the agent creates it on its first run)")
    if os.path.isdir(path):
        raise StoreError(f"{path} is a folder, not a database file (name the file, e.g. "
                         f"--db {os.path.join(path, 'edgewatch.db')})")
    uri = "file:" + os.path.abspath(path).replace("?", "%3f").replace("#", "%23") + "?mode=ro"
    if not os.access(os.path.dirname(os.path.abspath(path)), os.W_OK) and \
            not os.path.exists(path + "-shm"):
        # WAL needs a -shm file it cannot create here (a read-only mount or a copy): nobody
        # can be writing, so read the file as it is.
        uri += "&immutable=1"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open database: {path}: {exc} (check permissions)") from exc
    conn.row_factory = sqlite3.Row
    return conn


def connect_edgewatch(path: str, newest: Optional[int] = None) -> sqlite3.Connection:
    """:func:`connect_readonly` to an edgewatch database (schema 1, up to ``newest`` when
    given); StoreError "not an edgewatch database" for any other file."""
    conn = connect_readonly(path)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreError(f"not an edgewatch database: {path}: {exc} "
                         "(check --db or [store] path)") from None
    if version < 1 or (newest is not None and version > newest):
        conn.close()
        why = "no edgewatch tables" if version < 1 else f"schema {version} is newer than " \
            f"this edgewatch ({newest}; upgrade edgewatch)"
        raise StoreError(f"not an edgewatch database: {path} ({why}; check --db or "
                         "[store] path)")
    return conn


def lock_path(db_path: str) -> str:
    """The lock file of a database."""
    return str(db_path) + ".lock"


class AgentLockedError(StoreError):
    """Another process (the running agent) holds the database."""


class DbLock:
    """An exclusive lock on ``<db>.lock``, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, db_path: str) -> None:
        self.path = lock_path(db_path)
        self._fd: Optional[int] = None

    def acquire(self, wait_s: float = LOCK_WAIT_S) -> DbLock:
        """Take the lock, waiting up to ``wait_s``; AgentLockedError when another holds it."""
        fd = _open_lock_file(self.path)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    holder = holder_info(self.path[:-len(".lock")]) or {}
                    pid = f" (pid {holder['pid']})" if holder.get("pid") else ""
                    raise AgentLockedError(
                        f"database in use by another edgewatch process{pid}: "
                        f"{self.path[:-len('.lock')]} (stop it, or give each agent its own "
                        "[store] path)") from None
                time.sleep(_POLL_S)
        self._fd = fd
        self.advertise()
        return self

    def advertise(self, **info: Any) -> None:
        """Record the holder's pid and ``info`` (e.g. ``control_socket``) in the lock file."""
        if self._fd is None:
            return
        data = json.dumps({"pid": os.getpid(), **info}).encode()
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)
        except OSError:
            pass  # a read-only lock file: the CLI falls back to the configured socket path

    def release(self) -> None:
        """Drop the lock (idempotent); the file stays, empty of meaning once unlocked."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _open_lock_file(path: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o660)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise StoreError(f"cannot open lock file {path}: {exc.strerror}") from None
    try:  # flock works on a read-only descriptor; writing the database will say why it fails
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        where = os.path.dirname(os.path.abspath(path))
        raise StoreError(f"cannot create lock file {path}: {exc.strerror} (make {where} "
                         "writable by this user, or is it mounted read-only?)") from None


def holder_info(db_path: str) -> Optional[Dict[str, Any]]:
    """What the process holding the database advertised, or None when nobody holds it."""
    path = lock_path(db_path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 4096, 0)
            try:
                info = json.loads(text) if text else {}
            except ValueError:
                info = {}
            return info if isinstance(info, dict) else {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
