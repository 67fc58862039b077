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


def start(procs: Processes, port: int) -> Path:
    """Start a cluster on 127.0.0.1:``port`` with role ``mlflow`` (trust); returns its
    folder (add it to the test's paths: its processes name it)."""
    programs = bindir()
    assert programs is not None, missing()
    folder = Path(tempfile.mkdtemp(prefix="appg-", dir="/tmp"))
    as_owner: list[str] = []
    if os.getuid() == 0:  # initdb and postgres refuse root
        shutil.chown(folder, "postgres", "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    procs.paths.append(str(folder))
    data = folder / "data"
    procs.run("postgres-initdb", [*as_owner, programs / "initdb", "-D", data, "-U", ROLE,
                                  "--auth=trust", "-E", "UTF8", "--no-sync"], 180)
    server = procs.start("postgres", [*as_owner, programs / "postgres", "-D", data,
                                      "-p", str(port), "-h", "127.0.0.1", "-k", folder,
                                      "-c", "fsync=off", "-c", "max_connections=200"])
    wait_for_port(port, 120, process=server.popen)
    return folder


def createdb(procs: Processes, port: int, name: str) -> None:
    programs = bindir()
    assert programs is not None
    procs.run("postgres-createdb", [programs / "createdb", "-h", "127.0.0.1", "-p", str(port),
                                    "-U", ROLE, name], 60)
