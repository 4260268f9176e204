"""What a newcomer sees: the process's own output (Ray's logs, its workers' lines, Ray Data and Train
internals) goes to a file under the run directory, and the terminal shows raygen's lines only: the
stages, their progress and key figures. `--verbose` shows everything as well.

Works at the file-descriptor level, so output of C extensions and of Ray's log monitor is caught too.
raygen's lines are those that carry a `[raygen` tag (a worker's, after Ray's `(pid=...)` prefix), the
stage banners, and the CLI's errors."""

from __future__ import annotations

import os
import re
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

_OURS = re.compile(r"(\[raygen[^\]]*\].*|^=== .*|^raygen: .*|^Serving at .*|^  curl .*|^Ctrl-C to stop\..*)")


def _pump(read_fd: int, log, terminal, verbose: bool) -> None:
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        pending = b""
        while chunk := pipe.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                log.write(raw + b"\n")
                line = raw.decode("utf-8", "replace")
                m = _OURS.search(line)
                if verbose or m:
                    terminal.write(((line if verbose else m.group(0)) + "\n").encode())
            log.flush()
            terminal.flush()


@contextmanager
def quiet(log_path: Path, verbose: bool = False):
    """Inside: stdout and stderr go to log_path; raygen's lines (all lines when verbose) to the terminal."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(1), "wb", buffering=0)
    read_fd, write_fd = os.pipe()
    log = open(log_path, "ab")  # noqa: SIM115 (closed below, after the pump stops)
    pump = threading.Thread(target=_pump, args=(read_fd, log, terminal, verbose), daemon=True)
    pump.start()
    os.dup2(write_fd, 1)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)  # the pipe's last writers in this process are gone: the pump drains and ends
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        pump.join(timeout=5)  # child processes (a local Ray) may still hold the pipe: the daemon pump
        log.flush()  # keeps writing what they say to the file and the terminal until the process exits
