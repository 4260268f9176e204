"""OpenAI response bodies from postprocessor deltas: completions and chat, whole and streamed. Pure.

    kind "text"  /v1/completions       choices[].text,            logprobs {tokens, token_logprobs, ...}
    kind "chat"  /v1/chat/completions  choices[].message|delta,   logprobs {content: [{token, logprob, ...}]}
"""

from __future__ import annotations

import time

from raygen.serve import tools
from raygen.serve.protocol import Delta

OBJECT = {"text": ("text_completion", "text_completion"), "chat": ("chat.completion", "chat.completion.chunk")}


def envelope(kind: str, request_id: str, model: str, version: str, choices: list[dict], stream: bool) -> dict:
    return {"id": request_id, "object": OBJECT[kind][stream], "created": int(time.time()), "model": model,
            "system_fingerprint": version, "choices": choices}


def logprobs(kind: str, entries: list[dict] | None, offset: int = 0) -> dict | None:
    """entries: the postprocessor's [{token, logprob, top: [[token, logprob], ...]}] for some tokens."""
    if entries is None:
        return None
    if kind == "chat":
        return {"content": [{"token": e["token"], "logprob": e["logprob"], "bytes": list(e["token"].encode()),
                             "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())}
                                              for t, v in e["top"]]} for e in entries]}
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e["token"])
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [dict(e["top"]) if e["top"] is not None else None for e in entries],
            "text_offset": offsets}


def choice(kind: str, index: int, deltas: list[Delta], stream: bool, first: bool = False, offset: int = 0) -> dict:
    """One choice from its deltas: all of them (a whole response) or one streamed chunk."""
    text = "".join(d.text for d in deltas)
    entries = [e for d in deltas for e in (d.logprobs or [])] if any(d.logprobs is not None for d in deltas) else None
    out = {"index": index, "logprobs": logprobs(kind, entries, offset), "finish_reason": deltas[-1].finish_reason}
    if kind == "text":
        out["text"] = text
        prompt_lps = next((d.prompt_logprobs for d in deltas if d.prompt_logprobs is not None), None)
        if prompt_lps is not None:
            out["prompt_logprobs"] = prompt_lps
    elif stream:
        out["delta"] = ({"role": "assistant", "content": text} if first else {"content": text}) \
            if text or first or not deltas[-1].finish_reason else {}
    else:
        out["message"] = {"role": "assistant", "content": text}
    return out


def with_tool_calls(body: dict, mode: str, named: str | None, parallel: bool = True) -> dict:
    """A whole chat body with each choice's tool calls read from its text (serve/tools.py): message.tool_calls,
    the text outside them as content (null when none), finish_reason tool_calls when it stopped on its own."""
    for c in body["choices"]:
        msg = c["message"]
        content, calls = tools.parse_whole(msg["content"] or "", mode, named, parallel)
        if calls:
            msg["content"], msg["tool_calls"] = content, [call.as_dict() for call in calls]
            if c["finish_reason"] == "stop":
                c["finish_reason"] = "tool_calls"
    return body


def usage(last: list[Delta]) -> dict:
    """From each choice's last delta: the prompt counts once, completions add up over the choices."""
    prompt = last[0].prompt_tokens if last else 0
    completion = sum(d.completion_tokens for d in last)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": last[0].cached_tokens if last else 0}}


def running_usage(prompt: int, completion: int, cached: int) -> dict:
    """The usage so far, in vLLM's continuous_usage_stats chunks."""
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def whole(kind: str, request_id: str, model: str, version: str, choices: dict[int, list[Delta]]) -> dict:
    body = envelope(kind, request_id, model, version,
                    [choice(kind, i, ds, stream=False) for i, ds in sorted(choices.items())], stream=False)
    body["usage"] = usage([ds[-1] for ds in choices.values()])
    return body


def replay(kind: str, body: dict, request_id: str, include_usage: bool, continuous: bool = False) -> list[dict]:
    """A cached whole response as the chunks a stream of it would have carried (one per choice, all its
    tokens at once). With `continuous` every chunk carries the whole usage: the hit is sent in one write,
    and the body does not keep per-choice counts."""
    chunks = []
    for c in body["choices"]:
        text = c["text"] if kind == "text" else c["message"]["content"]
        part = {"index": c["index"], "logprobs": c["logprobs"], "finish_reason": c["finish_reason"]}
        if kind == "text":
            part["text"] = text
            if "prompt_logprobs" in c:
                part["prompt_logprobs"] = c["prompt_logprobs"]
        else:
            part["delta"] = {"role": "assistant", "content": text}
        chunks.append({**body, "id": request_id, "object": OBJECT[kind][True], "choices": [part]})
        chunks[-1].pop("usage", None)
        if continuous:
            chunks[-1]["usage"] = dict(body["usage"])
    if include_usage:
        chunks.append({**body, "id": request_id, "object": OBJECT[kind][True], "choices": []})
    return chunks
