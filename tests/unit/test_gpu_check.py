"""benchmarks/gpu_check.sh runs where the GPU image does: torch and transformers, no Ray, no DeepSpeed.

Here on CPU (`--device cpu --quick`, what CI can run) with ray and deepspeed made unimportable in every
Python process the script starts: a sitecustomize on PYTHONPATH puts None in sys.modules for them, which
is how an absent package looks to both `import` and `importlib.util.find_spec`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BLOCK = """import sys
for name in ("ray", "deepspeed"):
    sys.modules[name] = None  # as if not installed: import raises ImportError, find_spec returns None
"""


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_gpu_check_runs_on_cpu_without_ray_and_prints_its_figures(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK)
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHON": sys.executable}
    out = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--device", "cpu", "--quick", "--out", str(tmp_path / "out")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    text = out.stdout
    assert out.returncode == 0, text[-4000:] + out.stderr[-2000:]
    assert re.search(r"^ray\s+not importable", text, re.M) and re.search(r"^deepspeed\s+not importable", text, re.M)
    assert "raygen.engine imports with torch + transformers; it also loaded: none of ray, deepspeed, pydantic" in text
    assert re.search(r"^PASS .*greedy float32 llama, gather \+ SDPA", text, re.M)
    assert re.search(r"^parity: \d+ passed, 0 failed on cpu", text, re.M)
    summary = text[text.index("==== gpu_check summary ===="):]
    figures = {k: float(v) for k, v in re.findall(
        r"^(raygen tokens/s|% of roofline|decode bandwidth|vs transformers)\s+([\d.]+)", summary, re.M)}
    assert set(figures) == {"raygen tokens/s", "% of roofline", "decode bandwidth", "vs transformers"}, summary
    assert figures["raygen tokens/s"] > 0 and figures["vs transformers"] > 0
    assert 0 < figures["% of roofline"] <= 100 and 0 < figures["decode bandwidth"] <= 100
    assert re.search(r"^result\s+OK", summary, re.M)
    assert (tmp_path / "out" / "engine_bench.json").is_file() and (tmp_path / "out" / "gpu_check.log").is_file()
