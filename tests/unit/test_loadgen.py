"""benchmarks/loadgen.py's accounting, which every peer comparison rests on: per-token ITL from merged chunks,
TPOT, goodput at the SLO, and the final usage winning over chunk counts."""

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("loadgen", Path(__file__).resolve().parents[2] / "benchmarks" / "loadgen.py")
loadgen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(loadgen)


def test_a_chunk_of_k_tokens_is_k_gaps_spread_over_its_wait():
    # first token at 0.1 s; then a chunk of 4 tokens 0.2 s later, then one of 1 token 0.01 s later
    assert loadgen.per_token_itl([0.1, 0.3, 0.31], [1, 4, 1]) == pytest.approx([0.05] * 4 + [0.01])
    assert loadgen.per_token_itl([0.5], [1]) == []


def test_summary_counts_tokens_tpot_goodput_and_errors():
    fast = {"times": [0.2, 0.3, 0.4], "counts": [1, 5, 4], "tokens": 10, "error": None}  # TPOT 0.2/9 s
    slow_first = {"times": [1.5, 1.58], "counts": [1, 1], "tokens": 2, "error": None}  # TTFT over 1 s
    failed = {"times": [], "counts": [], "tokens": 0, "error": "HTTP 503: busy"}
    s = loadgen.summarize({"wall": 2.0, "results": [fast, slow_first, failed]})
    assert s["requests"] == 3 and s["errors"] == 1 and s["first_error"] == "HTTP 503: busy"
    assert s["output_tok_s"] == 6.0 and s["request_s"] == 1.0 and s["goodput_rps"] == 0.5
    assert s["ttft_p50_ms"] in (200.0, 1500.0) and s["ttft_p99_ms"] == 1500.0
    assert s["itl_over_100ms"] == 0 and s["itl_max_ms"] == 80.0  # slow_first's single gap
    assert s["chunks_per_token"] == round(5 / 12, 3)


def test_workload_is_seeded_and_shares_its_prefix():
    a = loadgen.workload(5, 100, seed=3, prompt=(4, 8), output=(2, 3), prefix=6)
    assert a == loadgen.workload(5, 100, seed=3, prompt=(4, 8), output=(2, 3), prefix=6)
    assert len({tuple(r["prompt"][:6]) for r in a}) == 1 and all(10 <= len(r["prompt"]) <= 14 for r in a)
    assert all(2 <= t < 100 for r in a for t in r["prompt"]) and all(2 <= r["max_tokens"] <= 3 for r in a)
