"""Processes for end-to-end tests: free ports, start and stop by process id, find survivors.

Every process a :class:`Processes` starts runs in a session of its own and carries a
marker in its environment (``AUTOPRUNE_TEST_TOKEN``), which the processes it starts
inherit, detached daemons included (``ray start`` leaves the Ray daemons running after it
exits; the raylet puts its workers in process groups of their own). Stopping kills the
process groups, then every process that carries the marker or whose command line names
one of the test's own paths, then checks that none is left. Nothing is matched by a
program's name: other people's Ray clusters and MLflow servers on the machine are safe.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOKEN_VAR = "AUTOPRUNE_TEST_TOKEN"


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (the OS picks it: bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports (held open together, so the OS gives distinct ones)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def wait_for_port(port: int, timeout: float, host: str = "127.0.0.1",
                  process: subprocess.Popen[Any] | None = None) -> None:
    """Until something accepts connections on ``port`` (or ``process`` exits: an error)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{shlex.join(map(str, process.args))} exited with "
                               f"{process.returncode} before listening on port {port}")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


@dataclass
class Proc:
    """One process started by the test, with where its output goes."""

    name: str
    popen: subprocess.Popen[Any]
    log: Path

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Processes:
    """Starts processes for one test and stops every one of them, by process id.

    ``paths``: folders unique to the test; a process whose command line names one of them
    is the test's (Ray's daemons name their ``--temp-dir``) even without the marker.
    """

    logs: Path
    paths: list[str] = field(default_factory=list)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: list[Proc] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self._baseline = descendants(os.getpid())

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {**os.environ, **(extra or {}), TOKEN_VAR: self.token}

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
              cwd: str | Path | None = None) -> Proc:
        """Start ``argv`` in the background, output to ``logs/<name>.log``."""
        log = self.logs / f"{name}.log"
        self.commands.append([str(a) for a in argv])
        with open(log, "ab") as out:
            popen = subprocess.Popen([str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=self.env(env), cwd=cwd,
                                     start_new_session=True)
        proc = Proc(name, popen, log)
        self.started.append(proc)
        return proc

    def run(self, name: str, argv: Sequence[str], timeout: float,
            env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
            check: bool = True) -> tuple[int, str]:
        """Run ``argv`` to its end (killed after ``timeout``); returns (exit code, output)."""
        proc = self.start(name, argv, env=env, cwd=cwd)
        try:
            code = proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait()
            raise AssertionError(f"{name} ran past {timeout:.0f} s:\n{proc.tail()}") from None
        output = proc.log.read_text(errors="replace")
        if check and code != 0:
            raise AssertionError(f"{shlex.join(proc.popen.args)} exited with {code}:\n"
                                 f"{proc.tail(80)}")
        return code, output

    def ours(self) -> list[int]:
        """Live processes of this test: the marker, one of its paths, or a new child."""
        pids = set(descendants(os.getpid())) - set(self._baseline)
        needle = f"{TOKEN_VAR}={self.token}".encode()
        paths = [p.encode() for p in self.paths if p]
        for pid in _pids():
            if pid == os.getpid():
                continue
            environ, cmdline = _read(pid, "environ"), _read(pid, "cmdline")
            if needle in environ.split(b"\0") or any(p in cmdline for p in paths):
                pids.add(pid)
        return sorted(p for p in pids if _alive(p))

    def stop_all(self, grace: float = 10.0) -> list[str]:
        """Stop everything; returns descriptions of processes that survived (should be []).

        SIGTERM first (process groups, then every process of the test), SIGKILL after
        ``grace`` seconds. A process group is signalled only while one of the test's own
        processes is in it: a group id is never reused while it has members.
        """
        for sig in (signal.SIGTERM, signal.SIGKILL):
            ours = self.ours()
            groups = {_pgid(pid) for pid in ours}
            for proc in self.started:
                if proc.popen.pid in groups:
                    _killpg(proc.popen.pid, sig)
            _signal(self.ours(), sig)
            deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 0)
            while self.ours() and time.monotonic() < deadline:
                time.sleep(0.2)
        for proc in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5)
        deadline = time.monotonic() + 5
        while self.ours() and time.monotonic() < deadline:
            time.sleep(0.2)
        return [describe(pid) for pid in self.ours()]


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` in the parent tree."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        stat = _read(pid, "stat")
        try:
            ppid = int(stat.rsplit(b")", 1)[1].split()[1])
        except (IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def describe(pid: int) -> str:
    cmd = _read(pid, "cmdline").replace(b"\0", b" ").decode(errors="replace").strip()
    return f"{pid}: {cmd[:300]}"


def _pids() -> Iterable[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def _read(pid: int, name: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    """Running and not a zombie (a zombie has exited; its parent has yet to reap it)."""
    stat = _read(pid, "stat")
    if not stat:
        return False
    try:
        return stat.rsplit(b")", 1)[1].split()[0] != b"Z"
    except IndexError:
        return False


def _pgid(pid: int) -> int:
    try:
        return int(_read(pid, "stat").rsplit(b")", 1)[1].split()[2])
    except (IndexError, ValueError):
        return -1


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pgid, sig)


def _signal(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


__all__ = ["Proc", "Processes", "describe", "descendants", "free_port", "free_ports",
           "wait_for_port"]
