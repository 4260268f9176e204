"""The Postprocessor's stream handling with the real safety filter, fed by a scripted model stream (the
model is not the part under test here; tests/test_gateway.py runs the whole graph)."""

from __future__ import annotations

import asyncio

from raygen.engine.request import RequestOutput, SamplingParams
from raygen.serve.postprocess import Postprocessor
from raygen.serve.protocol import ReplicaChunk
from raygen.serve.safety import SafetyFilter


class ScriptedStream:
    """Stands in for `llm.options(stream=True).generate.remote(...)`: yields the given chunks."""

    def __init__(self, chunks):
        self.chunks, self.cancelled, self.sent = [ReplicaChunk("v1", c) for c in chunks], False, 0

    def __aiter__(self):
        return self._gen()

    async def _gen(self):
        for c in self.chunks:
            if self.cancelled:
                return
            self.sent += 1
            yield c

    def cancel(self):
        self.cancelled = True


class ScriptedLLM:
    def __init__(self, stream):
        self.stream = stream
        self.generate = self

    def options(self, **_):
        return self

    def remote(self, *_, **__):
        return self.stream


def _post(stream, f: SafetyFilter) -> Postprocessor:
    post = Postprocessor.func_or_class.__new__(Postprocessor.func_or_class)
    post.llm, post.safety, post.tokenizer, post.model_name = ScriptedLLM(stream), f, None, "m"
    from collections import Counter

    post.blocked = Counter()
    return post


def _out(index, text, reason=None, n=1):
    return RequestOutput("r", index, [0] * len(text), text, None, reason, 3, 0, n)


def _collect(post, n=1):
    async def run():
        return [d async for d in post.stream([1, 2, 3], SamplingParams(max_tokens=64, n=n))]
    return asyncio.run(run())


def test_output_violation_split_across_chunks_ends_the_choice_with_content_filter():
    pieces = ["The secret ", "pass", "word is ", "hunter2 and ", "more text ", "that never comes"]
    stream = ScriptedStream([[_out(0, p)] for p in pieces] + [[_out(0, "", "length")]])
    post = _post(stream, SafetyFilter(blocklist=["password is"], redact_pii=False))
    deltas = _collect(post)
    text = "".join(d.text for d in deltas)
    assert "password" not in text and "hunter2" not in text and "The secret ".startswith(text)
    assert deltas[-1].finish_reason == "content_filter"
    assert stream.cancelled and stream.sent < len(stream.chunks)  # generation stopped early
    assert post.safety_stats() == {"blocklist:password is": 1}


def test_one_choice_cut_the_other_finishes_and_pii_is_redacted():
    chunks = [[_out(0, "mail me at bob@"), _out(1, "a harmless ")],
              [_out(0, "example.com please"), _out(1, "forbidden word")],
              [_out(0, " thanks", "stop"), _out(1, " here", "stop")]]
    post = _post(ScriptedStream(chunks), SafetyFilter(blocklist=["forbidden word"]))
    deltas = _collect(post, n=2)
    by = {i: [d for d in deltas if d.index == i] for i in (0, 1)}
    assert "".join(d.text for d in by[0]) == "mail me at <EMAIL> please thanks" and by[0][-1].finish_reason == "stop"
    assert "forbidden" not in "".join(d.text for d in by[1]) and by[1][-1].finish_reason == "content_filter"
