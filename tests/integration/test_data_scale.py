"""A corpus larger than Ray's object store runs through the data stage with the driver's memory bounded
(its own local Ray in a subprocess, object store at Ray's 75 MiB minimum, ~80 MB of jsonl)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_corpus_larger_than_the_object_store_with_bounded_driver_memory(tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    script = Path(__file__).with_name("scale_data_run.py")
    out = subprocess.run([sys.executable, str(script), str(tmp_path), "80", "75"], capture_output=True,
                         text=True, timeout=1200, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["corpus_bytes"] > 80 * 2**20 > 75 * 2**20 and r["docs"] == r["collected"]
    # The driver sees counts, the tokenizer's text stream and small tables, never the corpus.
    assert r["driver_growth"] < 0.25 * r["corpus_bytes"], r
