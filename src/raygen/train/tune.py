"""Hyperparameter search: Ray Tune over any train/model field, each trial a full raygen training run.

    tune:
      space:
        train.lr: {loguniform: [1e-4, 1e-2]}
        train.warmup_steps: {choice: [0, 10, 50]}
        model.preset: {grid: [gpt2-mini, llama-mini]}
        train.zero_stage: 3                               # a plain value: fixed for every trial
      search: random            # or grid, optuna, auto
      num_samples: 8
      asha: {grace_evals: 1, reduction_factor: 2}

The Train V2 pattern: the Tune trainable is a function that builds and fits a TorchTrainer (raygen's
`train`), and Ray Train's TuneReportCallback forwards every report (each eval's val loss, with the
checkpoint path) to Tune, so ASHA stops a trial whose val loss trails at a rung; the trial's actor dies
and its Train controller and workers with it. The trainable itself takes no CPU; concurrency is sized
to what the cluster fits. Output: a table (printed, results.csv), val-loss curves per trial
(val_loss.png), and the best finished trial's model in the registry.

The space checks (`parse_space`) are pure: a field that does not exist, a section that cannot be tuned
(data, features: they need a new data run) or a malformed distribution fails before Ray does anything.
"""

from __future__ import annotations

import csv
import tempfile
import math
import time
from pathlib import Path
from typing import Any

from raygen.config import RaygenConfig, validate_config
from raygen.errors import ConfigError, TrainingError
from raygen.storage import Location

TUNABLE = ("train", "model")
_DISTRIBUTIONS = {"uniform": 2, "loguniform": 2, "randint": 2, "choice": None, "grid": None}


def parse_space(space: dict[str, Any], search: str) -> dict[str, tuple[str, Any]]:
    """{field: (kind, args)} with kind in fixed/uniform/loguniform/randint/choice/grid; raises ConfigError."""
    from raygen.train.config import ModelConfig, TrainConfig

    fields = {"train": TrainConfig.model_fields, "model": ModelConfig.model_fields}
    out: dict[str, tuple[str, Any]] = {}
    for key, spec in space.items():
        section, _, name = key.partition(".")
        if section not in TUNABLE or not name:
            raise ConfigError(f"tune.space key {key!r}: tune fields of {' or '.join(TUNABLE)} as section.field "
                              "(data and features need a new data run; tune them with separate data runs)")
        if name not in fields[section]:
            raise ConfigError(f"tune.space key {key!r}: {section} has no field {name!r} (fields: "
                              f"{', '.join(fields[section])})")
        if not isinstance(spec, dict):
            out[key] = ("fixed", spec)
            continue
        if len(spec) != 1 or next(iter(spec)) not in _DISTRIBUTIONS:
            raise ConfigError(f"tune.space {key}: {spec!r} must be a value or one of "
                              f"{{{'|'.join(_DISTRIBUTIONS)}: [...]}}")
        kind, args = next(iter(spec.items()))
        if not isinstance(args, list) or not args:
            raise ConfigError(f"tune.space {key}: {kind} takes a non-empty list, got {args!r}")
        if _DISTRIBUTIONS[kind] and (len(args) != 2 or not all(isinstance(a, (int, float)) for a in args)
                                     or args[0] >= args[1]):
            raise ConfigError(f"tune.space {key}: {kind} takes [low, high] numbers with low < high, got {args!r}")
        if kind == "loguniform" and args[0] <= 0:
            raise ConfigError(f"tune.space {key}: loguniform needs low > 0, got {args!r}")
        if search == "grid" and kind not in ("grid", "choice"):
            raise ConfigError(f"tune.space {key}: search 'grid' takes only grid/choice lists, got {kind}")
        if search == "optuna" and kind == "grid":
            raise ConfigError(f"tune.space {key}: optuna does not take grid entries; use choice")
        out[key] = ("grid" if search == "grid" else kind, args)
    if not any(kind != "fixed" for kind, _ in out.values()):
        raise ConfigError("tune.space has nothing to search: give at least one distribution, e.g. "
                          "train.lr: {loguniform: [1e-4, 1e-2]}")
    return out


def base_config(cfg: RaygenConfig) -> dict:
    """The resolved config as a dict for trials: every section whole (absolute paths: trials run in other
    directories), but the model section only as set, so a tuned preset is not masked by default sizes."""
    return cfg.model_dump() | {"model": cfg.model.model_dump(exclude_unset=True)}


def apply(base: dict, overrides: dict[str, Any]) -> RaygenConfig:
    """The base config (a model_dump) with `section.field` values set, validated."""
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        raw[section] = {**raw.get(section, {}), name: value}
        if section == "model" and name == "preset":  # a preset's sizes must not be masked by the base's
            raw["model"] = {k: v for k, v in raw["model"].items()
                            if k not in ("family", "n_layer", "n_embd", "n_head", "n_kv_head", "intermediate_size")}
    return validate_config(raw, f"tune trial {overrides}")


def check_values(cfg: RaygenConfig, parsed: dict[str, tuple[str, Any]]) -> None:
    """Every listed value (fixed, choice, grid, bounds) makes a valid config on its own: fail now, not in a trial."""
    base = base_config(cfg)
    for key, (kind, args) in parsed.items():
        values = [args] if kind == "fixed" else args
        for v in values:
            if kind == "randint":
                v = int(v)
            try:
                trial = apply(base, {key: v})
                if key.startswith("model."):
                    from raygen.train.model import build_hf_config

                    build_hf_config(trial.model, 1024, 64, 0, 0)
            except ConfigError as exc:
                raise ConfigError(f"tune.space {key} = {v!r} makes an invalid trial: {exc}") from exc


def _domains(parsed: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    from ray import tune

    make = {"fixed": lambda a: a, "uniform": lambda a: tune.uniform(*a), "loguniform": lambda a: tune.loguniform(*a),
            "randint": lambda a: tune.randint(a[0], a[1] + 1), "choice": tune.choice, "grid": tune.grid_search}
    return {key: make[kind](args) for key, (kind, args) in parsed.items()}


def _trial(config: dict, base: dict, experiment: str) -> None:
    """One Tune trial: raygen's training run (a sibling of the experiment in train.storage_path), its reports
    forwarded to Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from raygen.train.trainer import train

    cfg = apply(base, config)
    name = f"{experiment}-{tune.get_context().get_trial_id()}"
    train(cfg, callbacks=[TuneReportCallback()], run_name=name)


def concurrency(cfg: RaygenConfig) -> int:
    import ray

    if cfg.tune.max_concurrent_trials:
        return cfg.tune.max_concurrent_trials
    res = ray.cluster_resources()
    tc = cfg.train
    if tc.use_gpu or (tc.use_gpu is None and res.get("GPU", 0) >= tc.num_workers):
        return max(1, int(res.get("GPU", 0) // tc.num_workers))
    # One CPU stays free for Ray Data's read tasks, which feed every trial's workers.
    return max(1, int((res.get("CPU", 1) - 1) // (tc.num_workers * tc.cpus_per_worker)))


def _searcher(cfg: RaygenConfig):
    search = cfg.tune.search
    if search in ("optuna", "auto"):
        try:
            from ray.tune.search.optuna import OptunaSearch

            import optuna  # noqa: F401
        except ImportError as exc:
            if search == "optuna":
                raise ConfigError("tune.search optuna needs Optuna: pip install optuna (or search: random)") from exc
            return None
        return OptunaSearch(seed=cfg.tune.seed)
    return None


def tune_run(cfg: RaygenConfig) -> dict:
    """Run the search; returns {"experiment", "table" (rows), "best" (row or None), "version", "dir"}."""
    from raygen.train.trainer import prepare

    ts, tc = cfg.tune, cfg.train
    parsed = parse_space(ts.space, ts.search)
    check_values(cfg, parsed)
    prepare(cfg)  # data, tokenizer, shapes of the base config: before any trial starts
    experiment = f"{ts.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    base = base_config(cfg)
    t0 = time.time()
    grid = _tuner(cfg, parsed, base, experiment).fit()
    tuned = [k for k, (kind, _) in parsed.items() if kind != "fixed"]
    rows, curves = _results(grid, tuned, tc.max_steps)
    out_dir = Location(tc.storage_path) / experiment
    with tempfile.TemporaryDirectory(prefix="raygen-tune-") as tmp:  # then beside the trials, local or remote
        _write_results(Path(tmp), experiment, rows, curves, tuned)
        out_dir.upload(tmp)
    print(f"[raygen tune] {len(rows)} trials in {time.time() - t0:.0f}s; {sum(r['status'] == 'stopped early' for r in rows)}"
          f" stopped early by ASHA; table {out_dir / 'results.csv'}, plot {out_dir / 'val_loss.png'}", flush=True)
    finished = [r for r in rows if r["status"] == "finished" and r["checkpoint"]]
    best = finished[0] if finished else None
    version = None
    if ts.export_best and best is not None:
        version = _export(cfg, base, best, tuned, grid)
    elif ts.export_best:
        raise TrainingError(f"no trial of {experiment} finished; nothing to export (see {out_dir / 'results.csv'})")
    return {"experiment": experiment, "table": rows, "best": best, "version": version, "dir": str(out_dir)}


def _tuner(cfg: RaygenConfig, parsed: dict, base: dict, experiment: str):
    """A Tuner of function trainables (each runs a TorchTrainer), ASHA on val loss when enabled."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    ts, tc = cfg.tune, cfg.train
    searcher = _searcher(cfg)
    scheduler = ASHAScheduler(time_attr="step", max_t=tc.max_steps, grace_period=tc.eval_every * ts.asha.grace_evals,
                              reduction_factor=ts.asha.reduction_factor) if ts.asha.enabled else None
    n_conc = concurrency(cfg)
    num_samples = 1 if ts.search == "grid" else ts.num_samples
    print(f"[raygen tune] {experiment}: {len(parsed)} fields {sorted(parsed)}, search "
          f"{ts.search if searcher is None else 'optuna'}, {num_samples} samples, {n_conc} concurrent, ASHA "
          f"{'on' if scheduler else 'off'}", flush=True)
    trainable = tune.with_resources(
        tune.with_parameters(_trial, base=base, experiment=experiment),
        # No CPU for the trial's driver function (Tune refuses an empty request; any CPU fraction here would
        # leave Ray Data's 1-CPU file-listing task unschedulable beside the workers): a token of memory.
        tune.PlacementGroupFactory([{"memory": 1_000_000}]))
    return tune.Tuner(
        trainable, param_space=_domains(parsed),
        tune_config=tune.TuneConfig(metric="val_loss", mode="min", num_samples=num_samples, search_alg=searcher,
                                    scheduler=scheduler, max_concurrent_trials=n_conc),
        run_config=tune.RunConfig(name=experiment, storage_path=tc.storage_path, verbose=1))


def _results(grid, tuned: list[str], max_steps: int) -> tuple[list[dict], dict]:
    """(one row per trial, best finished first; trial -> its val-loss curve)."""
    rows, curves = [], {}
    for r in grid:
        m = r.metrics or {}
        trial = m.get("trial_id") or Path(r.path).name
        df = r.metrics_dataframe
        vals = [] if df is None or "val_loss" not in df else list(zip(df["step"], df["val_loss"], strict=True))
        curves[str(trial)] = vals
        best_val = min((v for _, v in vals if v is not None and math.isfinite(v)), default=float("nan"))
        step = int(m.get("step", 0))
        rows.append({"trial": trial, **{k: r.config.get(k) for k in tuned}, "step": step,
                     "status": "error" if r.error else ("finished" if step >= max_steps else "stopped early"),
                     "val_loss": m.get("val_loss"), "best_val_loss": best_val, "loss": m.get("loss"),
                     "tokens_per_s": m.get("tokens_per_s"), "checkpoint": m.get("checkpoint_path")})
    rows.sort(key=lambda row: (row["status"] != "finished", row["val_loss"] if row["val_loss"] is not None
                               else float("inf")))
    return rows, curves


def _write_results(out_dir: Path, experiment: str, rows: list[dict], curves: dict, tuned: list[str]) -> None:
    """results.csv, val_loss.png (a curve per trial) and the table on stdout."""
    from raygen.train.report import curves_png

    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["trial"])
        w.writeheader()
        w.writerows(rows)

    def label(row: dict) -> str:
        return f"{row['trial']} (" + ", ".join(f"{k.split('.')[-1]}={_short(row[k])}" for k in tuned) + ")"

    curves_png({label(r): curves[str(r["trial"])] for r in rows}, f"{experiment}: val loss per trial", "val loss",
               str(out_dir / "val_loss.png"))
    _print_table(rows, tuned)


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _print_table(rows: list[dict], tuned: list[str]) -> None:
    cols = ["trial", *tuned, "status", "step", "val_loss", "best_val_loss"]
    cells = [[_short(r[c]) if r[c] is not None else "-" for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)), flush=True)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)), flush=True)


def _export(cfg: RaygenConfig, base: dict, best: dict, tuned: list[str], grid) -> str:
    """Register the best trial's final checkpoint (its consolidated hf/ export) as the next version."""
    import json

    from ray.train import Checkpoint

    from raygen.data.pipeline import load_stats
    from raygen.train.trainer import TrainOutcome
    from raygen.workflow import register

    ckpt = best["checkpoint"]
    if not Path(ckpt, "hf").is_dir():  # remote storage
        ckpt = Checkpoint(ckpt).to_directory()
    trial_cfg = apply(base, {k: best[k] for k in tuned})
    meta = json.loads(Path(ckpt, "history.json").read_text())
    result = next(r for r in grid if (r.metrics or {}).get("trial_id") == best["trial"])
    stats = load_stats(cfg.data.output_dir)
    outcome = TrainOutcome(metrics=dict(result.metrics), checkpoint_dir=ckpt, hf_dir=str(Path(ckpt, "hf")),
                           tokenizer_dir=str(stats.tokenizer_dir()), data=stats,
                           seconds=float(result.metrics.get("time_total_s", 0)), run_name=best["trial"],
                           history=meta["history"], resumed_from=meta["resumed_from"])
    return register(trial_cfg, outcome)
