"""`raygen`: demo, data, train, tune, serve, promote, models. Flags pick a config and override a few knobs."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from raygen.errors import RaygenError

SMOKE_PROMPT = "The for statement is used to"


def _config(args):
    from raygen.config import load_config

    overrides = list(args.set or [])
    if getattr(args, "data", None):
        overrides.append(f"data.paths={args.data!r}".replace("'", '"'))
    if getattr(args, "port", None):
        overrides.append(f"serve.port={args.port}")
    return load_config(args.config, overrides)


def _banner(step: str) -> None:
    print(f"\n=== {step} ===", flush=True)


def _run_dir(cfg, name: str) -> Path:
    """runs/<name>-<time>/ beside the training runs (or under RAYGEN_HOME when those are remote)."""
    from raygen import paths

    root = Path(cfg.train.storage_path) if "://" not in cfg.train.storage_path else paths.resolve("runs")
    return root / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def cmd_demo(args) -> int:
    """The seven stages, quietly: Ray's own logs and the full config go to files under the run directory."""
    import yaml

    from raygen.console import quiet

    cfg = _config(args)
    run_dir = _run_dir(cfg, "demo")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    print(f"[raygen] demo: data {cfg.data.output_dir}, model {cfg.registry.root}/{cfg.registry.name}; "
          f"config and logs in {run_dir}", flush=True)
    try:
        with quiet(run_dir / "ray.log", verbose=args.verbose):
            return _demo(args, cfg)
    finally:
        print(f"[raygen] full config: {run_dir / 'config.yaml'}; Ray's logs: {run_dir / 'ray.log'} "
              "(--verbose shows them live)", flush=True)


def _demo(args, cfg) -> int:
    from raygen.cluster import init_ray
    from raygen.data.pipeline import prepare_data
    from raygen.train.trainer import train
    from raygen.workflow import complete, curl_line, register, wait_ready

    t0 = time.time()
    dashboard = init_ray()
    print(f"[raygen] Ray dashboard: {dashboard or 'off'}", flush=True)
    _banner("1-3/7 collect, clean, features")
    prepare_data(cfg)
    _banner("4/7 train (Ray Train + DeepSpeed)")
    outcome = train(cfg)
    m = outcome.metrics
    print(f"[raygen] loss {m['first_loss']:.3f} → {m['loss']:.3f}; val loss {m['val_loss']:.3f}, "
          f"val perplexity {m['val_ppl']:.1f}", flush=True)
    _banner("5/7 register")
    register(cfg, outcome)
    _banner("6/7 serve")

    def smoke(url: str) -> bool:
        wait_ready(url)
        print(f"[raygen] serving {cfg.registry.name} at {url}", flush=True)
        _banner("7/7 smoke")
        out = complete(url, SMOKE_PROMPT, max_tokens=32, temperature=0.7, seed=0)
        print(f"[raygen] prompt: {SMOKE_PROMPT!r}\n[raygen] completion: {out['choices'][0]['text']!r}\n"
              f"[raygen] usage: {out['usage']}", flush=True)
        print(f"[raygen] demo done in {time.time() - t0:.0f}s", flush=True)
        if not args.smoke:
            print(f"\nServing at {url} (OpenAI-compatible). Try:\n  {curl_line(url, SMOKE_PROMPT)}", flush=True)
        return not args.smoke

    return _serve(cfg, smoke)


def _serve(cfg, on_ready) -> int:
    """Deploy the graph, call on_ready(url); keep serving until Ctrl-C when it returns True."""
    from ray import serve

    from raygen.serve import app

    try:
        url = app.run(cfg)
        if on_ready(url):
            print("Ctrl-C to stop.", flush=True)
            while True:
                time.sleep(3600)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        serve.shutdown()


def cmd_data(args) -> int:
    from raygen.cluster import init_ray
    from raygen.data.pipeline import prepare_data

    cfg = _config(args)
    init_ray()
    prepare_data(cfg)
    return 0


def cmd_label_export(args) -> int:
    from raygen.cluster import init_ray
    from raygen.data.pipeline import export_for_labeling

    cfg = _config(args)
    init_ray()
    n = export_for_labeling(cfg, args.out, args.size, args.stratify_by, args.seed)
    print(f"wrote {n} Label Studio tasks to {args.out}; import the annotated export back with a labeler "
          f"spec {{kind: human, path: <export.json>, name: <column>}} in data.labelers")
    return 0


def cmd_label_import(args) -> int:
    from raygen.cluster import init_ray
    from raygen.data.pipeline import import_labels

    cfg = _config(args)
    init_ray()
    import_labels(cfg, args.export, args.name, args.from_name)
    return 0


def cmd_train(args) -> int:
    from raygen.cluster import init_ray
    from raygen.train.trainer import train
    from raygen.workflow import register

    cfg = _config(args)
    init_ray()
    register(cfg, train(cfg))
    return 0


def cmd_tune(args) -> int:
    from raygen.cluster import init_ray
    from raygen.train.tune import tune_run

    cfg = _config(args)
    init_ray()
    out = tune_run(cfg)
    if out["best"] is not None:
        print(f"[raygen tune] best trial {out['best']['trial']}: val loss {out['best']['val_loss']:.4f}"
              + (f" → {cfg.registry.name}/{out['version']}" if out["version"] else ""), flush=True)
    return 0


def cmd_serve(args) -> int:
    from raygen.cluster import init_ray
    from raygen.registry import Registry

    cfg = _config(args)
    Registry(cfg.registry.root).resolve(cfg.registry.name, cfg.serve.version)  # fail before Ray starts
    init_ray()

    def announce(url: str) -> bool:
        print(f"[raygen] serving {cfg.registry.name}/{cfg.serve.version} at {url}", flush=True)
        return True

    return _serve(cfg, announce)


def cmd_promote(args) -> int:
    from raygen.registry import Registry

    cfg = _config(args)
    reg = Registry(cfg.registry.root)
    reg.set_alias(cfg.registry.name, args.alias, args.version)
    print(f"{cfg.registry.name}: {args.alias} → {reg.resolve(cfg.registry.name, args.alias)[0]}")
    return 0


def cmd_models(args) -> int:
    from raygen.registry import Registry

    cfg = _config(args)
    reg = Registry(cfg.registry.root)
    name = cfg.registry.name
    print(f"{name}: versions {reg.versions(name)}, aliases {reg.aliases(name)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="raygen", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, fn, help):
        sp = sub.add_parser(name, help=help)
        sp.add_argument("--config", help="raygen YAML config (defaults: the demo)")
        sp.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one config value")
        sp.set_defaults(fn=fn)
        return sp

    d = add("demo", cmd_demo, "raw text → cleaned data → trained model → registry → served API")
    d.add_argument("--data", action="append", metavar="PATH", help="extra .txt/.md/.jsonl files or directories")
    d.add_argument("--smoke", action="store_true", help="exit after the first answer")
    d.add_argument("--port", type=int, help="HTTP port (default 8000)")
    d.add_argument("--verbose", action="store_true", help="show Ray's own logs live (always written to a file)")
    add("data", cmd_data, "run the data stage").add_argument("--data", action="append", metavar="PATH")
    le = add("label-export", cmd_label_export, "a stratified sample of curated documents for Label Studio")
    le.add_argument("out", help="JSON file of Label Studio tasks to write")
    le.add_argument("--size", type=int, default=200, help="tasks to sample")
    le.add_argument("--stratify-by", default="domain", help="label column whose shares the sample keeps")
    le.add_argument("--seed", type=int, default=0)
    li = add("label-import", cmd_label_import, "annotations from a Label Studio export become a label column")
    li.add_argument("export", help="Label Studio JSON (or JSON-MIN) export of the annotated tasks")
    li.add_argument("--name", default="human_label", help="column to write")
    li.add_argument("--from-name", default="label", help="the Choices tag's name in the labeling config")
    add("train", cmd_train, "train on prepared data and register the model")
    add("tune", cmd_tune, "hyperparameter search (tune.space in the config); registers the best model")
    add("serve", cmd_serve, "serve a registered model").add_argument("--port", type=int)
    pr = add("promote", cmd_promote, "point an alias (default: production) at a version")
    pr.add_argument("version")
    pr.add_argument("--alias", default="production")
    add("models", cmd_models, "list versions and aliases")
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except RaygenError as exc:
        print(f"raygen: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
