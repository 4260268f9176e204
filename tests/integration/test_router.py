"""PrefixAwareRouter on a live graph with two LLMServer replicas: requests sharing a prompt prefix land on
the replica that holds it, and a burst of them still spreads once that replica is busier than the other
by more than the margin."""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.request

import pytest

pytestmark = pytest.mark.integration
MARGIN = 2


@pytest.fixture(scope="module")
def two_replicas(trained, tiny_config):
    from ray import serve

    from raygen.serve import app
    from raygen.workflow import wait_ready

    cfg = tiny_config.model_copy(deep=True)
    s = cfg.serve
    s.llm_replicas, s.llm_num_cpus, s.router_load_margin, s.router_chunk_tokens = 2, 0.5, MARGIN, 16
    s.cache.enabled = False
    s.split_processing = True  # the Pre/Postprocessor as deployments of their own (other modules: in-process)
    url = app.run(cfg)
    wait_ready(url)
    yield url
    serve.shutdown()


def _complete(url: str, prompt: list[int], max_tokens: int) -> None:
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0}).encode()
    req = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.status == 200


def _per_replica() -> dict[str, dict]:
    """Engine stats of both replicas (the stats call itself is routed at random: ask until both answer)."""
    from ray import serve

    from raygen.serve.app import APP_NAME

    llm = serve.get_deployment_handle("LLMServer", APP_NAME)
    seen: dict[str, dict] = {}
    for _ in range(200):
        st = llm.stats.remote().result()
        seen[st["replica"]] = st
        if len(seen) == 2:
            return seen
    raise AssertionError(f"only saw replicas {list(seen)}")


def test_shared_prefix_goes_to_the_holder_then_spreads_under_skew(two_replicas):
    rng = random.Random(0)
    prefix = [rng.randrange(2, 500) for _ in range(32)]  # two router chunks; prompts + outputs stay < 64
    before = _per_replica()
    for _ in range(5):  # one at a time: loads stay level, so affinity decides
        _complete(two_replicas, prefix + [rng.randrange(2, 500) for _ in range(8)], 4)
        time.sleep(1.2)  # let the replicas' load reports catch up
    mid = _per_replica()
    gen = {r: mid[r]["num_generated_tokens"] - before[r]["num_generated_tokens"] for r in mid}
    holder = max(gen, key=gen.get)
    assert sorted(gen.values()) == [0, 5 * 4], gen  # every request on one replica
    assert mid[holder]["prefix_hit_rate"] > 0.5, mid[holder]  # and its cache served the prefix

    errors = []

    def one(prompt):
        try:
            _complete(two_replicas, prompt, 16)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(prefix + [rng.randrange(2, 500)] * 8,)) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    after = _per_replica()
    burst = {r: (after[r]["num_generated_tokens"] - mid[r]["num_generated_tokens"]) // 16 for r in after}
    other = next(r for r in burst if r != holder)
    assert sum(burst.values()) == 12 and burst[other] >= 3, burst  # the holder did not take the whole burst
