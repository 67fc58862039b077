"""A throw-away PostgreSQL cluster for end-to-end tests: the production store of an MLflow
server, really started.

``initdb`` into a temporary folder, the server on a free port of 127.0.0.1 with its socket
in that folder, trust authentication for one role, no system service and nothing shared
with a PostgreSQL the machine may run. PostgreSQL refuses to run as root: as root, its
commands run as the ``postgres`` user Debian's package creates (``runuser``). The server
is started through the test's :class:`~_processes.Processes`, so it is stopped (and
checked gone) with everything else the test started.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from pathlib import Path

from _processes import Processes, wait_for_port

ROLE = "mlflow"


def bindir() -> Path | None:
    """PostgreSQL's server programs (Debian keeps them off the PATH), newest version."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def missing() -> str | None:
    """Why a PostgreSQL cluster cannot be started here (None: it can)."""
    if bindir() is None:
        return "needs PostgreSQL's server (make system-deps installs Debian's postgresql)"
    if os.getuid() == 0 and (shutil.which("runuser") is None or not _user_exists("postgres")):
        return "running as root needs the 'postgres' user and runuser to start PostgreSQL"
    return None


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def owned_folder(prefix: str) -> tuple[Path, list[str]]:
    """A new temporary folder for a cluster, and the prefix that runs PostgreSQL's programs
    as its owner (as root: ``runuser -u postgres --``, the folder given to that user)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    if os.getuid() != 0:
        return folder, []
    shutil.chown(folder, "postgres", "postgres")  # initdb and postgres refuse root
    return folder, ["runuser", "-u", "postgres", "--"]


def initdb_argv(as_owner: list[str], data: Path) -> list[object]:
    """``initdb`` of a cluster with role ``mlflow`` and trust authentication."""
    programs = bindir()
    assert programs is not None, missing()
    return [*as_owner, programs / "initdb", "-D", data, "-U", ROLE, "--auth=trust",
            "-E", "UTF8", "--no-sync"]


def server_argv(as_owner: list[str], folder: Path, port: int,
                settings: dict[str, str]) -> list[object]:
    """The server of the cluster in ``folder/data`` on 127.0.0.1:``port`` (its socket in
    ``folder``), with ``settings`` (``-c name=value``)."""
    programs = bindir()
    assert programs is not None, missing()
    extra = [arg for name, value in settings.items() for arg in ("-c", f"{name}={value}")]
    return [*as_owner, programs / "postgres", "-D", folder / "data", "-p", str(port),
            "-h", "127.0.0.1", "-k", folder, *extra]


def start(procs: Processes, port: int) -> Path:
    """Start a cluster on 127.0.0.1:``port`` with role ``mlflow`` (trust); returns its
    folder (add it to the test's paths: its processes name it)."""
    folder, as_owner = owned_folder("appg-")
    procs.paths.append(str(folder))
    procs.run("postgres-initdb", initdb_argv(as_owner, folder / "data"), 180)
    server = procs.start("postgres", server_argv(as_owner, folder, port, {
        "fsync": "off", "max_connections": "200"}))
    wait_for_port(port, 120, process=server.popen)
    return folder


def createdb(procs: Processes, port: int, name: str) -> None:
    programs = bindir()
    assert programs is not None
    procs.run("postgres-createdb", [programs / "createdb", "-h", "127.0.0.1", "-p", str(port),
                                    "-U", ROLE, name], 60)
