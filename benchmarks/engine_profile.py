"""Where a raygen engine step's time goes, on one device, in one short run (no Ray, no peers).

    python benchmarks/engine_profile.py --device cuda --preset gpt2-small --dtype bfloat16 --requests 256
    python benchmarks/engine_profile.py --preset gpt2-tiny --requests 32 --quick      # a CPU smoke

engine_bench measures tokens/s; this says why. The same workload (N random prompts of 32-256 tokens, all at
once, greedy, EOS off) runs through `LLMEngine.step` with each phase timed on the host: schedule, prepare
(the packed batch and its tensors), execute (the forward, synchronized on a GPU, so it is the device's time
plus launch overhead), process (sampling, detokenizing, bookkeeping). It prints the phases per step kind
(decode-only or with prefill), decode groups per step (each is one attention call per layer), and a
cProfile of the whole run by own time, then a torch.profiler table over a few full decode steps: how many
kernels a step launches and how long the device was busy against the step's wall time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_bench import PRESETS, make_model, make_workload  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def instrument(eng, device: str) -> dict[str, list[float]]:
    """Wrap the step's phases with host timers; returns the dict they append to (per step, in order)."""
    times: dict[str, list[float]] = defaultdict(list)

    def timed(name, fn, sync=False):
        def wrapper(*a, **k):
            t = time.perf_counter()
            r = fn(*a, **k)
            if sync:
                _sync(device)
            times[name].append(time.perf_counter() - t)
            return r
        return wrapper

    eng.scheduler.schedule = timed("schedule", eng.scheduler.schedule)
    eng.runner.prepare = timed("prepare", eng.runner.prepare)
    eng.runner.execute = timed("execute", eng.runner.execute, sync=True)
    eng._process = timed("process", eng._process)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="gpt2-small", choices=sorted(PRESETS))
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--max-seqs", type=int, default=256)
    ap.add_argument("--max-batched-tokens", type=int, default=2048)
    ap.add_argument("--kv-mib", type=float, default=8192)
    ap.add_argument("--quick", action="store_true", help="outputs of 16-32 tokens")
    ap.add_argument("--top", type=int, default=30, help="cProfile rows")
    args = ap.parse_args()

    from raygen.engine.engine import EngineConfig, LLMEngine
    from raygen.engine.request import SamplingParams

    spec = PRESETS[args.preset]
    tmp = Path(tempfile.mkdtemp(prefix="raygen-prof-"))
    make_model(tmp / "m", spec)
    eng = LLMEngine(EngineConfig(str(tmp / "m"), dtype=args.dtype, device=args.device, kv_cache_mib=args.kv_mib,
                                 max_num_seqs=args.max_seqs, max_num_batched_tokens=args.max_batched_tokens,
                                 max_num_waiting=None, tokenizer=None))
    eng.generate([[1] * 64] * 4, SamplingParams(max_tokens=8, temperature=0))  # warm-up
    output = (16, 32) if args.quick else (64, 256)
    reqs = make_workload(args.requests, None, seed=0, vocab=spec["vocab_size"], output=output)
    for i, r in enumerate(reqs):
        eng.add_request(f"r{i}", r["prompt"], SamplingParams(max_tokens=r["max_tokens"], temperature=0,
                                                            ignore_eos=True))
    times = instrument(eng, args.device)
    eng.step_log = []
    groups: list[int] = []
    prepare = eng.runner.prepare

    def counting_prepare(out):
        inputs = prepare(out)
        groups.append(len(inputs.meta.decode_groups))
        return inputs
    eng.runner.prepare = counting_prepare

    prof = cProfile.Profile()
    t0 = time.perf_counter()
    generated = 0
    prof.enable()
    while eng.has_unfinished():
        generated += sum(len(o.token_ids) for o in eng.step())
    prof.disable()
    wall = time.perf_counter() - t0
    steps = eng.step_log
    print(f"== {args.preset} {args.dtype} on {args.device}: {args.requests} requests, {len(steps)} steps, "
          f"{generated} tokens in {wall:.1f} s = {generated / wall:.0f} tok/s (under cProfile, which slows the "
          f"host side)")

    kinds = defaultdict(list)
    for i, s in enumerate(steps):
        kind = "decode" if all(n == 1 for n, _ in s.tokens) else "prefill"
        kinds[kind].append(i)
    for kind, idx in kinds.items():
        step_ms = statistics.median(steps[i].seconds for i in idx) * 1e3
        batch = statistics.median(len(steps[i].tokens) for i in idx)
        parts = "  ".join(f"{name} {statistics.median(times[name][i] for i in idx) * 1e3:.2f}"
                          for name in ("schedule", "prepare", "execute", "process"))
        g = statistics.median(groups[i] for i in idx)
        print(f"{kind:8s} steps {len(idx):4d}  median step {step_ms:.2f} ms at {batch:.0f} sequences; "
              f"phases (ms): {parts}; decode groups {g:.0f}")

    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(args.top)
    print("\n== cProfile, by own time")
    print("\n".join(line for line in s.getvalue().splitlines() if line.strip())[:12000])

    # torch.profiler over full-batch decode steps: kernels per step, device-busy time against wall time.
    for i, r in enumerate(reqs[:args.max_seqs]):
        eng.add_request(f"p{i}", r["prompt"][:64], SamplingParams(max_tokens=64, temperature=0, ignore_eos=True))
    for _ in range(40):  # past the prefills
        eng.step()
    acts = [torch.profiler.ProfilerActivity.CPU]
    if args.device.startswith("cuda"):
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    n = 5
    _sync(args.device)
    t = time.perf_counter()
    with torch.profiler.profile(activities=acts) as p:
        for _ in range(n):
            eng.step()
        _sync(args.device)
    wall = (time.perf_counter() - t) / n
    ka = p.key_averages()
    dev_attr = "self_device_time_total" if hasattr(ka[0], "self_device_time_total") else "self_cuda_time_total"
    # The kernels' own rows only: the aten ops that launched them carry the same device time again.
    busy = sum(getattr(e, dev_attr, 0) for e in ka if e.device_type == torch.autograd.DeviceType.CUDA) / n / 1e3
    launches = sum(e.count for e in ka if e.key.startswith(("cudaLaunch", "cuLaunch"))) / n
    print(f"\n== torch.profiler over {n} decode steps at {len(eng.step_log[-1].tokens)} sequences: {wall * 1e3:.1f} ms a step (profiled); device busy {busy:.1f} ms a step; "
          f"{launches:.0f} kernel launches a step")
    sort = dev_attr if args.device.startswith("cuda") else "self_cpu_time_total"
    print(ka.table(sort_by=sort, row_limit=25, max_name_column_width=60))


if __name__ == "__main__":
    main()
