"""raygen on a cluster of three Ray nodes on this machine: a head (the HTTP side) and two worker nodes, a
and b, started with `ray start` and telling themselves apart by labels. They share only S3 (moto on
127.0.0.1) for data, runs and models; each node has its own raygen cache. One module, one cluster: data
tasks run on both workers; 2 training workers run on 2 nodes, a worker node among them dies mid-run and
the run resumes from its last checkpoint on the nodes that remain; 2 model replicas serve from 2 nodes,
node b dies while clients stream, the survivor keeps serving and Serve brings the replica back when b
returns."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter

import pytest

from tests.integration.conftest import free_port, plant, registered_checkpoint
from tests.integration.multinode import LocalCluster

pytestmark = pytest.mark.integration

WORKER = {"raygen.io/pool": "worker"}
STATE: dict = {}


@pytest.fixture(scope="module")
def cluster(ray_cluster, s3, tmp_path_factory):
    """The three nodes; the test process leaves the session's cluster for them and rejoins it after."""
    import ray

    root = tmp_path_factory.mktemp("multinode")
    c = LocalCluster(root, dict(ray_cluster["env"]))
    ray.shutdown()
    try:
        c.start_head(cpus=2, labels={"raygen.io/node": "head", "raygen.io/pool": "head"})
        for name in ("a", "b"):
            c.add_worker(name, cpus=1, labels={"raygen.io/node": name, **WORKER})
        ray.init(address=c.address)  # c made itself RAY_ADDRESS: the state API's calls go there too
        yield c
    finally:
        try:
            from ray import serve

            serve.shutdown()
        except Exception:
            pass
        ray.shutdown()
        c.stop()  # RAY_ADDRESS back to the session's cluster
        ray.init(address=ray_cluster["address"])


def _cfg(tiny_config, base, **sections):
    from raygen.config import validate_config

    raw = tiny_config.model_dump()
    raw["data"] |= {"paths": [f"{base}/corpus"], "output_dir": f"{base}/data", "builtin": False}
    raw["train"]["storage_path"] = f"{base}/runs"
    raw["registry"]["root"] = f"{base}/models"
    for key, value in sections.items():
        section, name = key.split("__")
        raw[section][name] = value
    return validate_config(raw, "multinode")


def _tasks_per_node(cluster, job_id: str) -> Counter:
    from ray.util.state import list_tasks

    tasks = list_tasks(filters=[("job_id", "=", job_id)], detail=True, limit=10_000, raise_on_missing_output=False)
    return Counter(cluster.name_of(t.node_id) for t in tasks if t.node_id and t.type == "NORMAL_TASK")


def test_curation_tasks_run_on_both_worker_nodes(cluster, tiny_config, s3, tmp_path):
    import ray

    from raygen.data.pipeline import load_stats, prepare_data
    from raygen.storage import Location

    from pydoc_data.topics import topics

    base = f"{s3}/multinode-{uuid.uuid4().hex[:8]}"
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    plant(corpus)
    names = sorted(topics)[:80]  # a slice of the built-in corpus, as files in S3: many read tasks
    for i in range(0, len(names), 10):
        (corpus / f"topics-{i:03d}.jsonl").write_text("".join(json.dumps({"text": topics[n]}) + "\n"
                                                            for n in names[i:i + 10]))
    Location(f"{base}/corpus").upload(corpus)
    cfg = _cfg(tiny_config, base)
    t0 = time.time()
    stats = prepare_data(cfg)
    wall = time.time() - t0
    per_node = _tasks_per_node(cluster, ray.get_runtime_context().get_job_id())
    print(f"[multinode] data: {wall:.0f} s, {stats.num_documents} documents; tasks per node {dict(per_node)}")
    assert per_node["a"] > 0 and per_node["b"] > 0, per_node
    # Everything it wrote is in S3: documents, manifest, quarantine, features, the card and the commit.
    assert stats.num_train_blocks > 0 and stats.features_dir.startswith(f"{base}/data/features/")
    written = {rel.split("/")[0] for rel, _ in Location(f"{base}/data").files()}
    assert {"docs", "manifest", "quarantine", "features", "stats.json", "runs.json", "card.json", "card.md",
            "card_lengths.png"} <= written, written
    assert load_stats(f"{base}/data").dataset_version == stats.dataset_version
    assert {"bad_json", "no_text_field", "undecodable", "empty_file"} <= set(stats.dropped), stats.dropped
    STATE.update(base=base, data_wall=wall, data_tasks=dict(per_node))


def _workers_by_node(cluster) -> dict[str, str]:
    """RayTrainWorker actor id -> node name, for the live ones."""
    from ray.util.state import list_actors

    return {a.actor_id: cluster.name_of(a.node_id)
            for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
            if "RayTrainWorker" in (a.class_name or "")}


def test_training_on_two_nodes_survives_losing_one(cluster, tiny_config):
    """STRICT_SPREAD: each worker on its own node (of three). A worker node hosting one dies once a
    checkpoint is registered; the run resumes from S3 on the two nodes left. The node comes back for the serving
    test."""
    from raygen.storage import Location
    from raygen.train.trainer import train

    assert "base" in STATE, "needs the data of test_curation_tasks_run_on_both_worker_nodes"
    base = STATE["base"]
    cfg = _cfg(tiny_config, base, train__num_workers=2, train__cpus_per_worker=0.5, train__zero_stage=2,
               train__placement_strategy="STRICT_SPREAD", train__max_steps=30, train__eval_every=5,
               train__log_every=1, train__max_failures=3, train__precision="fp32", train__run_name="multinode")
    run_dir = Location(f"{base}/runs/multinode")
    seen: dict = {}

    def kill_a_node_with_a_worker():
        try:
            deadline = time.time() + 300  # a registered checkpoint before the last: there is one to resume from
            while time.time() < deadline and registered_checkpoint(run_dir) in (None, "checkpoint_step000030"):
                time.sleep(0.2)
            seen["before"] = sorted(_workers_by_node(cluster).values())
            seen["killed"] = "b" if "b" in seen["before"] else "a"
            cluster.kill(seen["killed"])
            seen["killed_at"] = time.time()
            cluster.wait_dead(seen["killed"])
            seen["dead_at"] = time.time()
        except BaseException as exc:  # the assertion below shows it
            seen["error"] = repr(exc)

    t = threading.Thread(target=kill_a_node_with_a_worker, daemon=True)
    t0 = time.time()
    t.start()
    outcome = train(cfg)
    wall = time.time() - t0
    t.join(timeout=120)
    print(f"[multinode] train: {wall:.0f} s; {seen}; restarts {outcome.restarts}, resumed from "
          f"{outcome.resumed_from}; workers at the end on {outcome.metrics.get('nodes')}")
    assert "error" not in seen and "dead_at" in seen, seen
    assert len(set(seen["before"])) == 2, seen  # two workers, two nodes
    cluster.restart(seen["killed"])  # back for the serving test
    assert outcome.restarts >= 1 and outcome.metrics["step"] == 30
    losses = {h["step"]: h["loss"] for h in outcome.history if "loss" in h}
    assert sorted(losses) == list(range(1, 31))
    resumed_at = outcome.resumed_from[0]
    assert resumed_at % 5 == 0 and 5 <= resumed_at < 30
    first, at_ckpt, nxt = losses[1], losses[resumed_at], losses[resumed_at + 1]
    assert nxt < at_ckpt + 0.25 * (first - at_ckpt), (first, at_ckpt, nxt)  # continuous: no jump back
    STATE.update(outcome=outcome, cfg=cfg, train_wall=wall, train_nodes=seen["before"])


def _stream(url: str, seed: int) -> str:
    """'ok', or what went wrong, for one streamed completion."""
    import urllib.request

    body = {"prompt": [5 + seed % 50, 6, 7], "max_tokens": 24, "temperature": 0.8, "seed": seed, "stream": True,
            "ignore_eos": True}
    req = urllib.request.Request(f"{url}/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            events = [line for line in resp.read().decode().split("\n") if line.startswith("data: ")]
    except Exception as exc:
        return f"{type(exc).__name__}"
    if not events or events[-1] != "data: [DONE]":
        return "cut"
    errors = [e for e in events if '"error"' in e]
    return "ok" if not errors else "error-event"


def _llm_nodes(cluster) -> list[str]:
    from ray.util.state import list_actors

    return sorted(cluster.name_of(a.node_id) for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
                  if (a.class_name or "").endswith("LLMServer"))


def _wait(pred, timeout: float, what: str):
    deadline = time.time() + timeout
    while not (got := pred()):
        assert time.time() < deadline, what
        time.sleep(0.5)
    return got


def test_serving_from_two_nodes_survives_losing_one(cluster):
    from raygen.registry import Registry
    from raygen.serve import app
    from raygen.workflow import register, wait_ready

    assert "outcome" in STATE, "needs the model of test_training_on_two_nodes_survives_losing_one"
    cfg = STATE["cfg"].model_copy(deep=True)
    version = register(cfg, STATE["outcome"])
    reg = Registry(cfg.registry.root)
    assert reg.aliases(cfg.registry.name) == {"latest": version} and reg.card(cfg.registry.name)["restarts"] >= 1
    s = cfg.serve
    s.port, s.version = free_port(), version
    s.llm_replicas, s.llm_num_cpus, s.llm_max_replicas_per_node = 2, 0.5, 1
    s.llm_label_selector, s.http_label_selector = WORKER, {"raygen.io/pool": "head"}
    cfg = type(cfg).model_validate(cfg.model_dump())
    url = app.run(cfg)
    wait_ready(url)
    assert _wait(lambda: (n := _llm_nodes(cluster)) == ["a", "b"] and n, 120, "replicas not on a and b")
    for name in ("a", "b"):  # each node fetched the version from S3 into its own cache
        assert list((cluster.root / f"cache-{name}" / "remote").glob(f"{version}-*/model.safetensors")), name

    results: list[tuple[float, str]] = []
    stop = threading.Event()

    def client(i: int) -> None:
        n = 0
        while not stop.is_set():
            t = time.time()
            results.append((t, _stream(url, 1000 * i + n)))
            n += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    _wait(lambda: sum(r == "ok" for _, r in results) >= 8, 120, "no streams before the kill")
    cluster.kill("b")
    killed_at = time.time()
    cluster.wait_dead("b")
    # The survivor keeps serving: streams started after b was declared dead succeed.
    dead_at = time.time()
    _wait(lambda: sum(r == "ok" for t, r in results if t > dead_at) >= 12, 120, "the survivor stopped serving")
    cluster.restart("b")
    _wait(lambda: _llm_nodes(cluster) == ["a", "b"], 180, "Serve did not bring the replica back on b")
    back_at = time.time()
    _wait(lambda: sum(r == "ok" for t, r in results if t > back_at) >= 8, 120, "no streams after b came back")
    stop.set()
    for t in threads:
        t.join(timeout=90)
    before = Counter(r for t, r in results if t < killed_at - 30)
    assert set(before) <= {"ok"}, before
    late = Counter(r for t, r in results if t > dead_at + 5)
    assert set(late) == {"ok"}, late  # once Serve knew b was gone, nothing failed, also while b came back
    early = Counter(r for t, r in results if killed_at - 30 <= t <= dead_at + 5)  # in flight on b, or routed there
    print(f"[multinode] serve: replicas on a and b; b killed, dead after {dead_at - killed_at:.1f} s, replica "
          f"back {back_at - dead_at:.0f} s after; outcomes before/after {dict(early)} / {dict(late)}")
