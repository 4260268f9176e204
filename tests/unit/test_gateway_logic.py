"""The gateway's pure cores: rate limiter, response cache, API keys, safety filters. No Ray, no model."""

import random

import pytest

from raygen.errors import RequestError
from raygen.serve.auth import KeyStore, digest
from raygen.serve.cache import ResponseCache, cache_key, cacheable
from raygen.serve.ratelimit import ConcurrencyLimiter, RateLimiter
from raygen.serve.safety import SafetyFilter


# -- rate limiting ------------------------------------------------------------------------------------
def test_requests_per_minute_is_accurate_under_sustained_load():
    rl = RateLimiter(requests_per_minute=120, tokens_per_minute=10**9)
    rng, now, admitted = random.Random(0), 0.0, 0
    while now < 600:  # ten minutes of clients retrying far faster than the limit
        now += rng.expovariate(20)
        admitted += rl.acquire("k", 1, now).allowed
    expected = 120 + 120 * 10  # the initial burst (a full bucket) plus the refill
    assert abs(admitted - expected) / expected < 0.05


def test_tokens_per_minute_refunds_unused_tokens_and_refuses_with_retry_after():
    rl = RateLimiter(requests_per_minute=1000, tokens_per_minute=600)  # 10 tokens/s
    d = rl.acquire("k", 500, now=0)
    assert d.allowed and d.remaining_tokens == 100
    rl.settle("k", reserved=500, used=50, now=0)  # the answer was short: 450 come back
    assert rl.acquire("k", 500, now=0).allowed
    refused = rl.acquire("k", 500, now=0)
    assert not refused.allowed and refused.retry_after == pytest.approx(45, abs=0.01)
    h = refused.headers()
    assert h["retry-after"] == "45" and h["x-ratelimit-limit-tokens"] == "600"
    assert rl.acquire("other", 500, now=0).allowed  # per key
    assert not rl.acquire("k", 601, now=10**6).allowed  # more than a minute's allowance never passes


# -- response cache -----------------------------------------------------------------------------------
def test_concurrency_cap_is_per_key_released_on_finish_and_expires_leases_of_dead_callers():
    lim = ConcurrencyLimiter(2, lease_ttl_s=60)
    assert lim.acquire("a", "r1", 0) and lim.acquire("a", "r2", 0)
    assert not lim.acquire("a", "r3", 1) and lim.held("a") == 2
    assert lim.acquire("b", "r4", 1)  # another key has its own cap
    assert lim.acquire("a", "r1", 2)  # the same lease again (a retried call) is not a second slot
    lim.release("r1")
    lim.release("r1")  # twice is harmless
    assert lim.acquire("a", "r3", 3) and not lim.acquire("a", "r5", 3)
    # r2 and r3 belong to an ingress that died: their leases run out after the TTL.
    assert lim.acquire("a", "r5", 64) and lim.held("a") == 1
    with pytest.raises(ValueError):
        ConcurrencyLimiter(0)
    named = ConcurrencyLimiter(None, per_key={"batch-job": 1})  # only the named key is capped
    assert named.acquire("batch-job", "x1", 0) and not named.acquire("batch-job", "x2", 0)
    assert all(named.acquire("anyone", f"y{i}", 0) for i in range(50)) and named.cap("anyone") is None


def test_cache_key_ignores_streaming_and_defaults_but_not_seed_or_version():
    """The ingress keys the validated request (protocol models fill the defaults in), as tested here."""
    from raygen.serve.protocol import ChatCompletionRequest, CompletionRequest, parse_request

    def key(body, version="v1", model=CompletionRequest):
        fields = parse_request(body, model).model_dump(mode="json")
        return cache_key(version, model.__name__, fields), cacheable(fields)

    a = {"prompt": "x", "temperature": 0, "stream": True, "max_tokens": 16, "user": "u1"}
    b = {"max_tokens": 16, "prompt": "x", "temperature": 0, "top_p": 1.0, "model": "tiny"}  # a default spelled out
    assert key(a) == key(b) and key(a)[1]
    assert key(a, "v2") != key(a)
    assert key({**a, "seed": 1}) != key({**a, "seed": 2}) and key({**a, "temperature": 1, "seed": 2})[1]
    assert key({**a, "top_p": 0.5}) != key(a) and key({**a, "stop": ["x"]}) != key(a)
    assert not key({"prompt": "x"})[1]  # sampled without a seed: not cacheable
    chat = {"messages": [{"role": "user", "content": "x"}], "temperature": 0}
    assert key(chat, model=ChatCompletionRequest) != key({**chat, "messages": [{"role": "user", "content": "y"}]},
                                                         model=ChatCompletionRequest)


def test_cache_ttl_lru_size_bound_and_invalidation():
    c = ResponseCache(max_entries=2, max_bytes=10**6, ttl_s=10)
    c.put("a", {"t": "A"}, "v1", now=0)
    c.put("b", {"t": "B"}, "v1", now=0)
    assert c.get("a", now=1) == {"t": "A"}  # a is now the most recent
    c.put("c", {"t": "C"}, "v1", now=1)  # evicts b, the least recently used
    assert c.get("b", now=1) is None and c.get("c", now=1)
    assert c.get("a", now=11) is None  # expired
    small = ResponseCache(max_entries=10, max_bytes=30)
    small.put("x", {"t": "x" * 10}, "v1", now=0)
    small.put("y", {"t": "y" * 10}, "v1", now=0)
    assert small.stats().bytes <= 30 and small.get("x", now=0) is None
    assert not small.put("big", {"t": "z" * 100}, "v1", now=0)
    c.put("d", {"t": "D"}, "v2", now=1)
    assert c.invalidate(keep_version="v2") == 1 and c.get("d", now=2)


# -- API keys -----------------------------------------------------------------------------------------
def test_keys_from_config_env_and_file_are_hashed_and_scoped(tmp_path, monkeypatch):
    f = tmp_path / "keys"
    f.write_text("# team keys\nops:s3cret-ops::admin\nbob:bobkey:demo|other\n")
    monkeypatch.setenv("RAYGEN_API_KEYS", "ci:ci-key")
    store = KeyStore.load([{"name": "alice", "key": "alice-key", "models": ["demo"]},
                           {"name": "hashed", "key_sha256": digest("pre-hashed")}], str(f))
    assert store.authenticate("Bearer alice-key").name == "alice"
    assert store.authenticate(None, x_api_key="ci-key").name == "ci"
    assert store.authenticate("Bearer pre-hashed").name == "hashed"
    assert store.authenticate("Bearer s3cret-ops").admin
    assert "alice-key" not in repr(store.__dict__)  # only hashes are kept
    for header, code in ((None, "missing_api_key"), ("Bearer nope", "invalid_api_key"), ("Basic x", "missing_api_key")):
        with pytest.raises(RequestError) as e:
            store.authenticate(header)
        assert e.value.status == 401 and e.value.code == code
    with pytest.raises(RequestError) as e:
        KeyStore.authorize(store.authenticate("Bearer alice-key"), "other")
    assert e.value.status == 403
    KeyStore.authorize(store.authenticate("Bearer bobkey"), "other")
    assert not KeyStore.load([], env=False).enabled
    with pytest.raises(ValueError, match="exactly one of key, key_sha256"):
        KeyStore.load([{"name": "x"}])


# -- safety -------------------------------------------------------------------------------------------
def _stream(f: SafetyFilter, text: str, size: int):
    g, out = f.guard(), []
    for i in range(0, len(text), size):
        out.append(g.feed(text[i:i + size]))
    out.append(g.flush())
    return "".join(out), g.violation


@pytest.mark.parametrize("size", [1, 2, 3, 7, 100])
def test_blocked_phrase_split_across_chunks_is_caught_before_any_of_it_leaves(size):
    f = SafetyFilter(blocklist=["forbidden fruit"], redact_pii=False)
    text = "the garden had a Forbidden Fruit tree and more"
    out, v = _stream(f, text, size)
    assert v is not None and v.rule == "blocklist:forbidden fruit"
    assert "forbidden" not in out.lower() and text.startswith(out)
    clean, v2 = _stream(f, "nothing to see here, a fruit and a forbidden door", size)
    assert v2 is None and clean == "nothing to see here, a fruit and a forbidden door"


@pytest.mark.parametrize("size", [1, 4, 9, 1000])
def test_pii_is_redacted_in_streamed_output(size):
    f = SafetyFilter()
    text = "mail john.doe@example.com or call +1 415-555-0123, card 4111 1111 1111 1111 thanks"
    out, v = _stream(f, text, size)
    assert v is None
    assert out == "mail <EMAIL> or call <PHONE>, card <CARD> thanks"


def test_regex_and_input_checks_and_bad_pattern():
    f = SafetyFilter(patterns=[r"\bpassword\s*="], redact_pii=False)
    assert f.violation("set PASSWORD = hunter2", "input").rule.startswith("regex:")
    assert f.violation("no secrets", "input") is None
    with pytest.raises(ValueError, match="not a valid regex"):
        SafetyFilter(patterns=["(unclosed"])


def test_classifier_hook_fires_on_output():
    f = SafetyFilter(redact_pii=False, classifier=lambda t: "toxic" if "awful" in t else None)
    out, v = _stream(f, "fine words, then awful words", 5)
    assert v is not None and v.rule == "classifier:toxic" and "awful" not in out


# -- prefix-affinity routing --------------------------------------------------------------------------
def test_router_prefers_the_replica_holding_the_prefix_unless_it_is_too_busy():
    from raygen.serve.router_policy import PrefixAffinity

    p = PrefixAffinity(chunk=4, margin=2)
    system = list(range(100, 132))
    p.record(system + [1, 2, 3], "A")
    p.record([9] * 40, "B")
    assert p.match(system + [7, 7, 7, 7]) == {"A": 32}
    assert p.rank(system + [5, 6], {"A": 3, "B": 1, "C": 2})[0] == "A"  # within the margin: affinity wins
    assert p.rank(system + [5, 6], {"A": 4, "B": 1, "C": 2}) == ["B", "C", "A"]  # too busy: least loaded
    assert p.rank([1, 2, 3, 4, 5], {"A": 0, "B": 0}) == ["A", "B"]  # no prefix known: by load
    # Under skew (every request shares the prefix) load still spreads once A runs ahead by the margin.
    loads = {"A": 0, "B": 0, "C": 0}
    for _ in range(30):
        r = p.rank(system + [0], loads)[0]
        loads[r] += 1
        p.record(system + [0], r)
    assert max(loads.values()) - min(loads.values()) <= 3
    p.forget("A")
    assert "A" not in p.match(system)
