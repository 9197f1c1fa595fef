"""The local control socket: how ``edgewatch alerts ...`` reaches the running agent.

Only the agent writes its database while it runs. The device CLI sends its command over a
Unix stream socket; the agent validates and runs it exactly as it runs an MQTT command
(:func:`agent.commands.handle_command` against its operator API) and answers. The protocol
is one JSON object per line each way::

    -> {"verb": "snooze", "payload": {"target": "data_drift", "duration": "30m"}}
    <- {"ok": true, "result": {"snoozed": "data_drift", "until": 1764500000.0}}
    <- {"ok": false, "error": "unknown kind or feature 'brightnes' (...)"}

The socket is ``[service] control_socket``; by default ``$RUNTIME_DIRECTORY/edgewatch.sock``
when systemd gives the service a runtime directory (``RuntimeDirectory=edgewatch``), else
``<[store] path>.sock``. Its mode is 0660, so members of the service's group (the operators)
can use it; the server advertises the path in the database's lock file (``<db>.lock``,
see :mod:`agent._sqlite`), which is how the CLI finds it whatever the environment.

When no agent holds the database, :func:`send` applies the command itself, through the same
validation and the same :class:`~agent.alerts.AlertManager` semantics, with the lock held so
that an agent starting meanwhile waits.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import stat
import time
from typing import Any, Callable, Dict, Iterator, Optional

from ._sqlite import AgentLockedError, holder_info
from .commands import ControlAPI, handle_command
from .config import Config
from .errors import CommandError, ConfigError
from .supervise import Supervisor

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 65536
SOCKET_NAME = "edgewatch.sock"
CLIENT_READ_S = 2.0  # the server drops a client that sends nothing for this long
_MAX_PATH = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
OFFLINE_VERBS = frozenset({"ack", "snooze", "disable", "enable", "set_threshold"})

Recorder = Callable[[str, Dict[str, Any], Dict[str, Any]], Any]


class AgentUnavailable(CommandError):
    """Nothing listens on the control socket."""


def socket_path(config: Config, environ: Optional[Dict[str, str]] = None) -> str:
    """Where the agent of ``config`` listens; ConfigError when too long for a Unix socket."""
    env = os.environ if environ is None else environ
    path = config.service.control_socket
    runtime = (env.get("RUNTIME_DIRECTORY") or "").split(":")[0]
    if not path:
        path = os.path.join(runtime, SOCKET_NAME) if runtime else config.store.path + ".sock"
    if len(os.fsencode(path)) > _MAX_PATH:
        raise ConfigError(f"control socket path too long for a Unix socket "
                          f"({len(os.fsencode(path))} bytes, max {_MAX_PATH}): {path} "
                          "(set [service] control_socket to a shorter path)")
    return path


class ControlServer:
    """Serves the operator API on a Unix socket from one supervised thread."""

    def __init__(self, path: str, api: ControlAPI, *, record: Optional[Recorder] = None,
                 supervisor: Optional[Supervisor] = None, max_bytes: int = MAX_LINE_BYTES) -> None:
        self.path = path
        self._api = api
        self._record = record
        self._own_supervisor = supervisor is None
        self._supervisor = supervisor or Supervisor()
        self._max = max_bytes
        self._sock: Optional[socket.socket] = None
        self._inode: Optional[int] = None

    def start(self) -> ControlServer:
        """Bind (replacing a stale socket file from a crash), listen, start the thread."""
        _remove_stale(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.path)
            os.chmod(self.path, 0o660)  # the operators' group may connect
            sock.listen(8)
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot listen on control socket {self.path}: {exc.strerror} "
                              "(set [service] control_socket to a writable place)") from None
        sock.settimeout(0.5)  # the step returns regularly, so stop() is noticed
        self._sock, self._inode = sock, os.stat(self.path).st_ino
        self._supervisor.spawn("edgewatch-control", self._step, backoff_s=0.5)
        log.info("control socket: %s", self.path)
        return self

    def close(self) -> None:
        """Stop serving and remove the socket file (if it is still ours); idempotent."""
        if self._own_supervisor:
            self._supervisor.stop()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            try:
                if os.stat(self.path).st_ino == self._inode:
                    os.unlink(self.path)
            except OSError:
                pass

    def _step(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            conn, _ = sock.accept()
        except socket.timeout:
            return
        with conn:
            conn.settimeout(CLIENT_READ_S)
            try:
                for line in _lines(conn, self._max):
                    answer = self.answer(line) if line is not None else {
                        "ok": False, "error": f"request longer than {self._max} bytes"}
                    conn.sendall(json.dumps(answer, default=str).encode() + b"\n")
            except OSError as exc:  # the client went away: its loss, not the server's failure
                log.debug("control client dropped: %s", exc)

    def answer(self, line: bytes) -> Dict[str, Any]:
        """The response to one request line (never raises for a bad request)."""
        try:
            request = json.loads(line)
        except ValueError as exc:
            return {"ok": False, "error": f"request is not JSON: {exc}"}
        if not isinstance(request, dict) or not isinstance(request.get("verb"), str) \
                or not isinstance(request.get("payload", {}), dict):
            return {"ok": False, "error": 'request must be {"verb": str, "payload": {...}}'}
        verb, payload = request["verb"], {"id": "control", **request.get("payload", {})}
        answer = handle_command(verb, json.dumps(payload).encode(), self._api,
                                max_bytes=self._max)
        if self._record is not None:
            self._record(verb, payload, answer)
        if answer.get("ok"):
            return {"ok": True, "result": answer.get("result", {})}
        return {"ok": False, "error": answer.get("error", "command rejected")}


def _lines(conn: socket.socket, limit: int) -> Iterator[Optional[bytes]]:
    """Request lines from a client until it closes or goes quiet; None for one too long."""
    buf = b""
    while True:
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                yield line if len(line) <= limit else None
        if len(buf) > limit:
            yield None
            return
        try:
            chunk = conn.recv(4096)
        except (socket.timeout, OSError):
            return
        if not chunk:
            return
        buf += chunk


def _remove_stale(path: str) -> None:
    """Unlink a socket file nobody listens on; refuse to replace anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"control socket path exists and is not a socket: {path} "
                          "(move it away or set [service] control_socket)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # left by a crash: nothing answers
        return
    finally:
        probe.close()
    raise ConfigError(f"another process listens on control socket {path} "
                      "(stop it, or set [service] control_socket)")


def control_request(path: str, verb: str, payload: Dict[str, Any],
                    timeout: float = 5.0) -> Dict[str, Any]:
    """Send one command to the agent at ``path``: ``{"ok", "result" | "error"}``.

    AgentUnavailable when nothing listens there; CommandError when it does not answer.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise AgentUnavailable(f"no agent listens on {path}: {exc.strerror}") from None
        except PermissionError:
            raise CommandError(f"permission denied on control socket {path} (run as a "
                               "member of the edgewatch group, or with sudo)") from None
        sock.sendall(json.dumps({"verb": verb, "payload": payload}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        raise CommandError(f"the agent did not answer within {timeout:g} s on {path} "
                           "(is it hung? see journalctl -u edgewatch)") from None
    except OSError as exc:
        if exc.errno in (errno.ECONNRESET, errno.EPIPE):
            raise CommandError(f"the agent closed the control socket {path} without an "
                               "answer (is it stopping?)") from None
        raise
    finally:
        sock.close()
    try:
        answer = json.loads(data)
    except ValueError:
        raise CommandError(f"not an edgewatch answer on {path}: {data[:80]!r}") from None
    if not isinstance(answer, dict) or "ok" not in answer:
        raise CommandError(f"not an edgewatch answer on {path}: {data[:80]!r}")
    return answer


def send(config: Config, verb: str, payload: Dict[str, Any],
         timeout: float = 5.0) -> Dict[str, Any]:
    """Run a command on the agent of ``config``, or offline when no agent holds its database.

    Returns ``{"ok", "result" | "error"}`` plus ``"offline": True`` when applied offline.
    """
    db = config.store.path
    deadline = time.monotonic() + timeout
    while True:
        holder = holder_info(db)
        if holder is None:
            if verb not in OFFLINE_VERBS:
                raise AgentUnavailable(f"no agent is running on {db} ({verb} needs the "
                                       "running agent: start it, then retry)")
            from ._offline import apply_offline

            try:
                return apply_offline(config, verb, payload)
            except AgentLockedError:
                if time.monotonic() >= deadline:
                    raise
                continue  # an agent took the database just now: ask it
        # Re-read each round: an agent that is starting advertises its socket a moment later.
        path = str(holder.get("control_socket") or socket_path(config))
        try:
            return control_request(path, verb, payload, max(0.1, deadline - time.monotonic()))
        except AgentUnavailable:
            if time.monotonic() >= deadline:
                pid = f" (pid {holder['pid']})" if holder.get("pid") else ""
                raise CommandError(f"the agent{pid} holds {db} but does not answer on {path} "
                                   "(is it starting or hung? see journalctl -u edgewatch)"
                                   ) from None
            time.sleep(0.1)
