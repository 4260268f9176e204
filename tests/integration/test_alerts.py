"""The alert path for real on the shared local Ray: a data run that drops most of its input (the injected
fault) → Ray's metrics endpoint → the AlertManager actor's scrape → a firing POST to a webhook server started
here (its first answer is a 500: the actor retries) → resolved once no more drops come in."""

from __future__ import annotations

import json
import threading
import time

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture()
def webhook():
    """(url, received bodies): an aiohttp server on 127.0.0.1 in a thread; answers 500 to the first POST."""
    import asyncio

    from aiohttp import web

    from tests.integration.conftest import free_port

    got: list[dict] = []
    calls = {"n": 0}

    async def hook(request):
        calls["n"] += 1
        if calls["n"] == 1:
            return web.Response(status=500)
        got.append(await request.json())
        return web.Response(text="ok")

    port = free_port()
    loop = asyncio.new_event_loop()
    runner_box = {}

    def serve():
        asyncio.set_event_loop(loop)
        app = web.Application()
        app.router.add_post("/hook", hook)
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        runner_box["r"] = runner
        loop.run_forever()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    time.sleep(0.5)
    yield f"http://127.0.0.1:{port}/hook", got
    asyncio.run_coroutine_threadsafe(runner_box["r"].cleanup(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    t.join(timeout=10)


def test_data_drop_fault_fires_to_a_webhook_and_resolves(trained, tiny_config, tmp_path, webhook):
    import ray

    from raygen.config import validate_config
    from raygen.data.pipeline import prepare_data
    from raygen.observability.alert_actor import AlertManager

    url, got = webhook
    rules = [{"name": "DataDrops", "expr": "data_drop_ratio > 0.5", "severity": "warning", "silence": 0,
              "message": "dropped {data_drop_ratio:.0%}"}]
    am = AlertManager.remote(rules, [url], None, 1.0, 3)
    assert ray.get(am.evaluate_once.remote()) == []  # the baseline scrape
    # The fault: a data run whose input is mostly too short to keep.
    junk = tmp_path / "junk"
    junk.mkdir()
    from tests.integration.conftest import DOC, GZ, NOTES

    good = [DOC, GZ, NOTES, DOC.replace("replicas", "copies"), GZ.replace("line", "row"), NOTES.replace("loss", "error")]
    bad = [f"tiny {i}" for i in range(30)]
    (junk / "docs.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in good + bad) + "\n")
    raw = tiny_config.model_dump()
    raw["data"] |= {"builtin": False, "paths": [str(junk)], "output_dir": str(tmp_path / "data"),
                    "stages": ["normalize", "quality"], "labelers": []}
    # The session's tokenizer: the fault is in the documents, and training one here is 10 s of nothing tested.
    raw["features"] |= {"tokenizer": str(trained[0].tokenizer_dir()), "block_size": 16}
    stats = prepare_data(validate_config(raw, "test"))
    assert sum(stats.dropped.values()) >= 30 and stats.num_documents <= 6
    fired, deadline = [], time.time() + 90
    while not fired and time.time() < deadline:
        time.sleep(2)
        fired = [n for n in ray.get(am.evaluate_once.remote()) if n["status"] == "firing"]
    assert fired, "the drop ratio never reached the alert"
    assert fired[0]["alert"] == "DataDrops" and fired[0]["delivered_to"] == [url]
    assert fired[0]["values"]["data_drop_ratio"] > 0.5 and fired[0]["message"].startswith("dropped ")
    assert got and got[0]["status"] == "firing"  # delivered after the retry
    resolved, deadline = [], time.time() + 60
    while not resolved and time.time() < deadline:
        time.sleep(2)
        resolved = [n for n in ray.get(am.evaluate_once.remote()) if n["status"] == "resolved"]
    assert resolved and got[-1]["status"] == "resolved" and ray.get(am.firing.remote()) == []
    ray.kill(am)
