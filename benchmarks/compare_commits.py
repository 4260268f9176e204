"""Paired before/after runs of a benchmark: this working tree against a base commit, alternating which goes
first, so drift on a shared machine (±15% here) falls on both sides alike; prints medians and ratios.

    python benchmarks/compare_commits.py --base 3a841ea --rounds 2 engine -- --requests 32 --quick
    python benchmarks/compare_commits.py --base 3a841ea --rounds 2 serve -- --quick --systems raygen

The base runs from a temporary git worktree with its own src/ first on PYTHONPATH (Ray's workers inherit
it). Results: benchmarks/results/compare/<bench>-<base>.json and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "results" / "compare"
BENCH = {"engine": ("engine_bench.py", "results/engine/engine_bench.json"),
         "serve": ("serve_bench.py", "results/serve/serve_bench_quick.json")}


def figures(bench: str, res: dict) -> dict[str, float]:
    """The figures a change must not move: throughput and latency, flattened to name -> value."""
    out = {}
    if bench == "engine":
        for dtype, systems in res["all_at_once"].items():
            m = systems.get("raygen", {})
            out |= _engine(f"{dtype} all-at-once", systems.get("raygen", {}))
        for dtype, m in res["poisson"].items():
            out |= _engine(f"{dtype} poisson", m)
        for dtype, m in res["prefix"].items():
            out |= {k: v for k, v in _engine(f"{dtype} prefix-cached", m.get("cached", {})).items() if "ttft" in k}
    else:
        for scenario, m in res["systems"]["raygen"].items():
            for k in ("output_tok_s", "ttft_p50_ms", "tpot_p50_ms"):
                out[f"{scenario} {k}"] = m[k]
        out["engine alone c1 ttft_p50_ms"] = res["engine_alone_c1"]["ttft_p50_ms"]
        out["cache hit p50_ms"] = res["cache_hit"]["p50_ms"]
    return out


def _engine(prefix: str, m: dict) -> dict[str, float]:
    """engine_bench's seconds as milliseconds, tokens/s as is."""
    out = {f"{prefix} tok_s": m["tok_s"]} if "tok_s" in m else {}
    return out | {f"{prefix} {k}_ms": m[k] * 1e3 for k in ("ttft_p50", "tpot_p50") if k in m}


def run(tree: Path, bench: str, extra: list[str]) -> dict[str, float]:
    script, result = BENCH[bench]
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    t = time.time()
    subprocess.run([sys.executable, str(tree / "benchmarks" / script), *extra], cwd=tree, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    print(f"  {tree.name}: {time.time() - t:.0f}s", flush=True)
    return figures(bench, json.loads((tree / "benchmarks" / result).read_text()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the commit to compare against")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("bench", choices=sorted(BENCH))
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="after --: the benchmark's own arguments")
    args = ap.parse_args()
    extra = [a for a in args.extra if a != "--"]
    runs: dict[str, list[dict]] = {"base": [], "head": []}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), args.base], cwd=REPO, check=True,
                       capture_output=True)
        try:
            for i in range(args.rounds):
                order = [("base", base), ("head", REPO)] if i % 2 == 0 else [("head", REPO), ("base", base)]
                print(f"round {i + 1}/{args.rounds}", flush=True)
                for name, tree in order:
                    runs[name].append(run(tree, args.bench, extra))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO, capture_output=True)
    report(args, runs)


def report(args, runs: dict[str, list[dict]]) -> None:
    names = [k for k in runs["head"][0] if all(k in r for r in runs["base"] + runs["head"])]
    lines = [f"### {args.bench}: HEAD vs {args.base} ({time.strftime('%Y-%m-%d')}, {args.rounds} paired rounds, "
             f"medians; args: {' '.join(a for a in args.extra if a != '--')})", "",
             "| figure | base | head | head / base |", "|---|---|---|---|"]
    rows = {}
    for k in names:
        b = statistics.median(r[k] for r in runs["base"])
        h = statistics.median(r[k] for r in runs["head"])
        rows[k] = {"base": b, "head": h, "ratio": h / b if b else None}
        lines.append(f"| {k} | {b:.1f} | {h:.1f} | {h / b:.2f} |" if b else f"| {k} | {b} | {h} | - |")
    text = "\n".join(lines)
    print(text)
    OUT.mkdir(parents=True, exist_ok=True)
    stem = f"{args.bench}-{args.base}"
    (OUT / f"{stem}.json").write_text(json.dumps({"runs": runs, "medians": rows}, indent=1))
    (OUT / f"{stem}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
