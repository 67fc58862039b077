"""Run many ``autoprune`` command lines in one process, as the console script would.

``python tests/_cli_batch.py JOBS.json RESULTS.json``: JOBS is a list of ``{"id", "argv",
"cwd"}``; for each, the working directory is changed, file descriptors 1 and 2 are sent to
files (so that whatever a library writes, through Python or not, is captured), and
``autoprune.cli.main(argv)`` runs; an exception escaping it is printed as Python would
(a traceback, exit code 1). RESULTS gets ``{id: {"returncode", "stdout", "stderr",
"seconds"}}``. One interpreter start and one torch import serve every case, where a
subprocess per case costs several seconds each.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback


def run(argv: list[str], cwd: str) -> dict:
    from autoprune.cli import main

    os.chdir(cwd)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        start = time.monotonic()
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse exits 2 on its own
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # what Python would print for an uncaught exception
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        seconds = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        return {"returncode": code, "stdout": out.read(), "stderr": err.read(),
                "seconds": seconds}


def main() -> None:
    with open(sys.argv[1]) as f:
        jobs = json.load(f)
    results = {job["id"]: run(job["argv"], job["cwd"]) for job in jobs}
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
