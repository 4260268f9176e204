"""`raygen demo` shows raygen's lines and files the rest: the console filter, on a real process's fds."""

import subprocess
import sys

SCRIPT = r"""
import os, subprocess, sys
from pathlib import Path
from raygen.console import quiet
log = Path(sys.argv[1])
with quiet(log, verbose=sys.argv[2] == "1"):
    print("=== 1-3/7 collect, clean, features")
    print("2026-12-03 INFO streaming_executor.py:123 -- Execution plan of Dataset ...")
    print("(RayTrainWorker pid=42) [raygen train] step 5/10 loss 5.1")
    subprocess.run(["echo", "[raygen data] from a child process"], check=True)
    print("a C extension's chatter", file=sys.stderr)
print("[raygen] after: the terminal is back")
"""


def _run(tmp_path, verbose: bool):
    log = tmp_path / f"ray-{verbose}.log"
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(log), "1" if verbose else "0"], capture_output=True,
                         text=True, timeout=60, check=True)
    return out.stdout.splitlines(), log.read_text().splitlines()


def test_the_terminal_gets_raygens_lines_and_the_file_gets_everything(tmp_path):
    shown, filed = _run(tmp_path, verbose=False)
    assert shown == ["=== 1-3/7 collect, clean, features", "[raygen train] step 5/10 loss 5.1",
                     "[raygen data] from a child process", "[raygen] after: the terminal is back"]
    assert len(filed) == 5 and "a C extension's chatter" in filed and any("streaming_executor" in x for x in filed)
    shown, _ = _run(tmp_path, verbose=True)
    assert len(shown) == 6 and "(RayTrainWorker pid=42) [raygen train] step 5/10 loss 5.1" in shown
