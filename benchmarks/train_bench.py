"""raygen training (Ray Train, 2 workers, DeepSpeed ZeRO-2) against a plain single-process PyTorch loop, in one run.

    python benchmarks/train_bench.py               # throughput in fp32 and bf16, then a 10-minute budget each (~35 min)
    python benchmarks/train_bench.py --quick       # a smoke run (few steps, 60 s budget)
    python benchmarks/train_bench.py --precisions bf16,bf16-autocast --budget-s 0   # throughput only (~10 min)

Model: GPT-2 architecture, 6 layers, hidden 512, 8 heads (raygen's `gpt2-bench` preset), vocab 8192, context
256, random init from the same seed in both systems (identical initial weights). Data: raygen's data stage on
the built-in corpus (CPython's documentation topics), packed into 256-token blocks; both systems read the same
Parquet shards. Optimizer and schedule the same: AdamW (betas 0.9/0.95, weight decay 0.1 on matrices), peak
lr 1e-3, 20 warmup steps, cosine to 10%, clipping at 1.0, global batch 16 sequences (4,096 tokens) per step.

Systems, each in its own subprocess so neither sees the other's threads or memory:
  raygen  `raygen.train.trainer.train`: TorchTrainer, 2 workers × --threads torch threads (raygen's default: cores ÷ workers), ZeRO-2 (gloo), micro-batch 8,
          data streamed through Ray Data; tokens/s from the loop's own progress lines (steps after 5: their
          tokens over their time).
  plain   nanoGPT-style: one process, torch threads = all cores, the shards loaded into one tensor and batches
          of 16 drawn at random, the same model class and optimizer; tokens/s the same way.

Phase 1, throughput: --steps steps per system per precision, for --rounds rounds that alternate which system goes
first; each system's median rate is compared. Precisions: fp32, and bf16 as each system does it by default:
raygen DeepSpeed's bf16 (bf16 weights, gradients and communication, fp32 master weights in the optimizer), the
plain loop autocast over fp32 weights (nanoGPT's recipe). raygen also runs bf16-autocast, the plain loop's recipe,
so the table shows how much of the bf16 ratio is the recipe and how much the machinery.
MFU = tokens/s × model FLOPs per token (raygen.train.flops: 6N + 12·L·H·T) ÷ a matmul peak measured here with
all cores in the same dtype (2048² GEMM). Target: raygen ≥ 0.85× plain tokens/s.
Phase 2, a fixed budget (--budget-s, default 600 s of wall time): each system runs at its faster precision for as
many steps as fit the budget by its phase-1 run (the cosine schedule needs the step count up front, as in nanoGPT):
the run's fixed cost (start-up, final eval, export) once, the rest at its phase-1 rate. Then its val loss is
compared. raygen's fixed cost includes Ray Train's workers and DeepSpeed's init, so it pays for its machinery.
Results go to benchmarks/results/train/ (JSON, Markdown, PNG).
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
OUT = HERE / "results" / "train"
SEQS, MICRO, BLOCK, VOCAB = 16, 8, 256, 8192
PRECISIONS = ("fp32", "bf16", "bf16-autocast")  # bf16-autocast: raygen only (the plain loop's bf16 recipe)
HP = {"lr": 1e-3, "warmup_steps": 20, "min_lr_ratio": 0.1, "weight_decay": 0.1, "grad_clip": 1.0, "seed": 0}


def _log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def _overrides(data_dir: str, work: Path) -> list[str]:
    return [f"data.output_dir={data_dir}", "data.builtin=true", f"features.vocab_size={VOCAB}",
            f"features.block_size={BLOCK}", "features.val_fraction=0.05", "model.preset=gpt2-bench",
            f"train.storage_path={work / 'runs'}", f"registry.root={work / 'models'}"]


# -- workers ---------------------------------------------------------------------------------------------------------
def worker_prepare(a) -> dict:
    import ray

    from raygen.config import load_config
    from raygen.data.pipeline import prepare_data

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    st = prepare_data(load_config(None, _overrides(a.data, Path(a.work))))
    ray.shutdown()
    return {"train_blocks": st.num_train_blocks, "val_blocks": st.num_val_blocks, "version": st.dataset_version}


def worker_raygen(a) -> dict:
    import ray

    from raygen.config import load_config
    from raygen.train.trainer import train

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    cfg = load_config(None, _overrides(a.data, Path(a.work)) + [
        f"train.run_name=bench-{a.precision}-{a.steps}", "train.resume=false", "train.num_workers=2",
        "train.cpus_per_worker=0.5", f"train.torch_threads={a.threads}", "train.zero_stage=2", f"train.precision={a.precision}",
        f"train.micro_batch_size={MICRO}", f"train.global_batch_size={SEQS}", f"train.max_steps={a.steps}",
        "train.log_every=1", f"train.eval_every={a.steps}"] + [f"train.{k}={v}" for k, v in HP.items()])
    t0 = time.time()
    out = train(cfg)
    wall = time.time() - t0
    ray.shutdown()
    h = [x for x in out.history if "tokens_per_s" in x and x["step"] > 5]
    # Every step moves the same tokens: their total over their total time is the harmonic mean of the rates.
    tok_s = len(h) / sum(1 / x["tokens_per_s"] for x in h) if h else out.metrics["tokens_per_s"]
    return {"tokens_per_s": tok_s, "val_loss": out.metrics["val_loss"], "wall": wall, "steps": a.steps,
            "loss_curve": [(x["step"], x["loss"]) for x in out.history if "loss" in x]}


def worker_plain(a) -> dict:
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raygen.config import load_config
    from raygen.data.pipeline import load_stats
    from raygen.train.model import build_hf_config
    from raygen.train.schedule import lr_factor

    t0 = time.time()
    torch.set_num_threads(os.cpu_count() or 1)
    cfg = load_config(None, _overrides(a.data, Path(a.work)))
    stats = load_stats(a.data)
    tok = AutoTokenizer.from_pretrained(stats.tokenizer_dir())
    torch.manual_seed(HP["seed"])  # the same initial weights as raygen's workers
    model = AutoModelForCausalLM.from_config(build_hf_config(cfg.model, len(tok), BLOCK, tok.eos_token_id,
                                                             tok.pad_token_id))
    train = torch.tensor(pq.read_table(stats.split_dir("train")).column("input_ids").to_pylist())  # (N, T)
    val = torch.tensor(pq.read_table(stats.split_dir("val")).column("input_ids").to_pylist())
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": HP["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=HP["lr"], betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, HP["warmup_steps"], a.steps,
                                                                       HP["min_lr_ratio"]))
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if a.precision == "bf16" else torch.enable_grad
    gen = torch.Generator().manual_seed(HP["seed"])
    curve, rates, last = [], [], time.time()
    model.train()
    for step in range(1, a.steps + 1):
        ids = train[torch.randint(len(train), (SEQS,), generator=gen)]
        with ctx():
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), HP["grad_clip"])
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        now = time.time()
        curve.append((step, loss.item()))
        if step > 5:
            rates.append(SEQS * BLOCK / (now - last))
        last = now
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(val), MICRO):
            ids = val[i:i + MICRO]
            with (torch.autocast("cpu", dtype=torch.bfloat16) if a.precision == "bf16" else torch.no_grad()):
                total += model(input_ids=ids, labels=ids).loss.item() * ids.numel()
            n += ids.numel()
    return {"tokens_per_s": len(rates) / sum(1 / r for r in rates) if rates else float("nan"), "val_loss": total / n,
            "wall": time.time() - t0, "steps": a.steps, "loss_curve": curve}


# -- driver ----------------------------------------------------------------------------------------------------------
def budget_steps(budget_s: float, rate: float, wall: float, steps: int) -> int:
    """Steps that fit a wall-clock budget, from a phase-1 run: its fixed cost (wall time not spent in steps:
    start-up, the final eval, the export) is paid once, the rest of the budget goes to steps at its rate."""
    per_step = SEQS * BLOCK / rate
    fixed = max(0.0, wall - steps * per_step)
    return max(10, int((budget_s - fixed) / per_step))


def spawn(kind: str, args, tmp: Path, **kw) -> dict:
    result = tmp / f"{kind}-{kw.get('precision', '')}-{kw.get('steps', '')}.json"
    cmd = [sys.executable, __file__, "--worker", kind, "--data", str(tmp / "data"), "--work", str(tmp),
           "--result", str(result), "--threads", str(args.threads), *[x for k, v in kw.items() for x in (f"--{k}", str(v))]]
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    t = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode or not result.is_file():
        raise SystemExit(f"{kind} {kw} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    for line in proc.stdout.splitlines():
        if line.startswith("[raygen train]") and ("params" in line or "val loss" in line):
            print("    " + line[:170], flush=True)
    res = json.loads(result.read_text())
    if "tokens_per_s" in res:
        _log(f"{kind} {kw}: {res['tokens_per_s']:.0f} tok/s, val loss {res['val_loss']:.4f}, {time.time() - t:.0f}s")
    return res


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budget = bool(results["budget"])
    fig, axes = plt.subplots(1, 2 if budget else 1, figsize=(12 if budget else 6.5, 4.5), squeeze=False)
    ax1 = axes[0][0]
    bars = [(f"{system} {prec}", by[system]["tokens_per_s"], "tab:blue" if system == "raygen" else "tab:gray")
            for prec, by in results["throughput"].items() for system in ("raygen", "plain") if system in by]
    ax1.barh(*zip(*[(label, v) for label, v, _ in bars], strict=True), color=[c for *_, c in bars])
    ax1.set_xlabel("tokens/s (higher is better)")
    ax1.set_title("training throughput, same model and global batch")
    if not budget:
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        return
    ax2 = axes[0][1]
    for system, color in (("raygen", "tab:blue"), ("plain", "tab:gray")):
        r = results["budget"][system]
        ax2.plot(*zip(*r["loss_curve"], strict=True), color=color, lw=1,
                 label=f"{system} ({r['precision']}, {r['steps']} steps, val {r['val_loss']:.3f})")
    ax2.set_xlabel("optimizer step")
    ax2.set_ylabel("train loss")
    ax2.set_title(f"{results['budget_s']:.0f} s budget")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=25, help="phase-1 steps per system and precision")
    ap.add_argument("--budget-s", type=float, default=600, help="phase-2 training budget per system (seconds)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="phase-1 rounds, alternating which system runs first (this machine's speed drifts by "
                         "~10%% between runs; each system's median over the rounds is compared)")
    ap.add_argument("--quick", action="store_true", help="8 steps, 1 round, 60 s budget: a smoke run")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads per raygen worker; 0: raygen's default, the cores ÷ the workers (1 here; "
                         "2 oversubscribes the cores: faster under bf16 autocast, slower under DeepSpeed's bf16)")
    ap.add_argument("--precisions", default=",".join(PRECISIONS),
                    help="phase-1 precisions, comma-separated (bf16-autocast runs raygen only)")
    for flag in ("--worker", "--data", "--work", "--result", "--precision"):
        ap.add_argument(flag, help=argparse.SUPPRESS)
    ap.add_argument("--tmp", default=None, help="where data and runs go (default: the system's temp)")
    args = ap.parse_args()
    if args.worker:
        res = {"prepare": worker_prepare, "raygen": worker_raygen, "plain": worker_plain}[args.worker](args)
        Path(args.result).write_text(json.dumps(res))
        return
    if args.quick:
        args.steps, args.budget_s, args.rounds = 8, 60, 1
    import torch

    from raygen.train.flops import flops_per_token, measure_matmul_peak

    torch.set_num_threads(os.cpu_count() or 1)
    peaks = {"fp32": measure_matmul_peak(torch.float32, "cpu"), "bf16": measure_matmul_peak(torch.bfloat16, "cpu")}
    _log(f"measured matmul peak, {os.cpu_count()} threads: fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, "
         f"bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s")
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="train_bench-") as tmpdir:
        tmp = Path(tmpdir)
        _log("data stage (built-in corpus, vocab 8192, 256-token blocks)")
        data = spawn("prepare", args, tmp)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from raygen.config import load_config
        from raygen.data.pipeline import load_stats
        from raygen.train.model import build_hf_config

        tok = AutoTokenizer.from_pretrained(load_stats(tmp / "data").tokenizer_dir())
        mc = load_config(None, ["model.preset=gpt2-bench"]).model
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(build_hf_config(mc, len(tok), BLOCK, 0, 1))
        fpt = flops_per_token(model, BLOCK)
        results = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "peaks": peaks, "flops_per_token": fpt,
                   "params": sum(p.numel() for p in model.parameters()), "data": data, "steps": args.steps,
                   "budget_s": args.budget_s, "rounds": args.rounds, "throughput": {}, "budget": {}}
        precisions = args.precisions.split(",")
        unknown = set(precisions) - set(PRECISIONS)
        if unknown:
            raise SystemExit(f"--precisions: unknown {sorted(unknown)}; choose from {', '.join(PRECISIONS)}")
        wanted = {(prec, system) for prec in precisions for system in ("raygen", "plain")}
        if "bf16-autocast" in precisions:
            wanted = wanted - {("bf16-autocast", "plain")} | {("bf16", "plain")}  # its reference is plain bf16
        runs: dict = {key: [] for key in sorted(wanted, key=lambda k: (PRECISIONS.index(k[0]), k[1]))}
        for rnd in range(args.rounds):
            for prec in PRECISIONS:
                for system in ("raygen", "plain")[::1 if rnd % 2 == 0 else -1]:
                    if (prec, system) in runs:
                        runs[prec, system].append(spawn(system, args, tmp, precision=prec, steps=args.steps))
        for (prec, system), rs in runs.items():
            rates = sorted(r["tokens_per_s"] for r in rs)
            r = next(x for x in rs if x["tokens_per_s"] == rates[(len(rates) - 1) // 2]) | {
                "tokens_per_s": statistics.median(rates), "rounds_tokens_per_s": [x["tokens_per_s"] for x in rs]}
            r["mfu"] = r["tokens_per_s"] * fpt / peaks["fp32" if prec == "fp32" else "bf16"]
            results["throughput"].setdefault(prec, {})[system] = r
        for system in ("raygen", "plain") if args.budget_s > 0 else ():
            prec = max(results["throughput"], key=lambda p: results["throughput"][p].get(system, {}).get(
                "tokens_per_s", 0))
            r1 = results["throughput"][prec][system]
            steps = budget_steps(args.budget_s, r1["tokens_per_s"], r1["wall"], r1["steps"])
            r = spawn(system, args, tmp, precision=prec, steps=steps)
            results["budget"][system] = r | {"precision": prec}
    report(results)


def report(results: dict) -> None:
    tp, b = results["throughput"], results["budget"]
    lines = [f"### Training benchmark ({results['date']}, {results['cpus']} CPUs; GPT-2 6L×512, "
             f"{results['params'] / 1e6:.1f}M params, {results['flops_per_token'] / 1e6:.0f} MFLOP/token; "
             f"{results['data']['train_blocks']} train / {results['data']['val_blocks']} val blocks of 256 tokens)", "",
             f"Measured matmul peak (all cores): fp32 {results['peaks']['fp32'] / 1e9:.1f} GFLOP/s, bf16 "
             f"{results['peaks']['bf16'] / 1e9:.1f} GFLOP/s", "",
             "| precision | raygen tok/s (MFU) | plain tok/s (MFU) | raygen / plain | per round (raygen:plain) |",
             "|---|---|---|---|---|"]
    for prec in [p for p in ("fp32", "bf16") if p in tp and "raygen" in tp[p]]:
        r, p = tp[prec]["raygen"], tp[prec]["plain"]
        pairs = zip(r["rounds_tokens_per_s"], p["rounds_tokens_per_s"], strict=True)
        per_round = " / ".join(f"{a:.0f}:{b:.0f}" for a, b in pairs)
        lines.append(f"| {prec} | {r['tokens_per_s']:.0f} ({100 * r['mfu']:.1f}%) | {p['tokens_per_s']:.0f} "
                     f"({100 * p['mfu']:.1f}%) | **{r['tokens_per_s'] / p['tokens_per_s']:.2f}×** | {per_round} |")
    if "bf16-autocast" in tp:  # raygen with the plain loop's recipe, against the plain loop's bf16
        r, p = tp["bf16-autocast"]["raygen"], tp["bf16"]["plain"]
        per_round = " / ".join(f"{a:.0f}" for a in r["rounds_tokens_per_s"])
        lines.append(f"| bf16-autocast (raygen) vs plain bf16 | {r['tokens_per_s']:.0f} ({100 * r['mfu']:.1f}%) | "
                     f"{p['tokens_per_s']:.0f} ({100 * p['mfu']:.1f}%) | {r['tokens_per_s'] / p['tokens_per_s']:.2f}× | "
                     f"{per_round} |")
    lines += ["", "bf16: raygen DeepSpeed's bf16 (fp32 master weights), plain autocast over fp32 weights.",
              "", f"Throughput target: raygen ≥ 0.85× plain ({results['steps']} steps each, tokens/s after step 5; the "
              f"median of {results.get('rounds', 1)} rounds)."]
    name = "train_bench" if b else "train_bench_throughput"  # a throughput-only run keeps the full run's files
    if b:
        lines += ["", f"Fixed budget of {results['budget_s']:.0f} s of wall time (steps planned from each system's phase-1 run):", "",
                  "| system | precision | steps | wall s (incl. start-up) | val loss |", "|---|---|---|---|---|"]
        for system in ("raygen", "plain"):
            r = b[system]
            lines.append(f"| {system} | {r['precision']} | {r['steps']} | {r['wall']:.0f} | {r['val_loss']:.4f} |")
        diff = b["raygen"]["val_loss"] - b["plain"]["val_loss"]
        lines.append(f"\nval loss raygen − plain: {diff:+.4f} (target ≤ 0: same or better)")
    text = "\n".join(lines)
    print("\n" + text)
    (OUT / f"{name}.md").write_text(text + "\n")
    (OUT / f"{name}.json").write_text(json.dumps(results, indent=1))
    plot(results, OUT / f"{name}.png")
    print(f"plot: {OUT / f'{name}.png'}")


if __name__ == "__main__":
    main()
