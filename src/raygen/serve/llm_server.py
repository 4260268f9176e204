"""LLMServer deployment: one model per replica, token ids in, token-id chunks out (streamed).

For now generation is transformers `generate`, one request at a time per replica; the engine issue
replaces it with raygen's continuous-batching engine behind the same `generate` stream.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator

from ray import serve

from raygen.serve.protocol import SamplingParams


class _QueueStreamer:
    """transformers streamer protocol (put/end) → an asyncio queue in the replica's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, cancelled: threading.Event):
        self.loop, self.queue, self.cancelled = loop, queue, cancelled
        self.seen_prompt = False

    def put(self, value) -> None:
        if not self.seen_prompt:  # generate() first hands over the prompt itself
            self.seen_prompt = True
            return
        if self.cancelled.is_set():
            raise _Cancelled()
        self.loop.call_soon_threadsafe(self.queue.put_nowait, value.reshape(-1).tolist())

    def end(self) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, None)


class _Cancelled(Exception):
    pass


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=32)
class LLMServer:
    def __init__(self, model_dir: str, torch_threads: int = 0):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(torch_threads or os.cpu_count() or 1)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self._lock = threading.Lock()  # one generate() at a time: transformers has no batching scheduler

    def _run(self, prompt_ids: list[int], p: SamplingParams, streamer: _QueueStreamer) -> None:
        import torch

        try:
            with self._lock, torch.inference_mode():
                if p.seed is not None:
                    torch.manual_seed(p.seed)  # generate() draws from the global RNG; the lock makes this safe
                sample = p.temperature > 0
                self.model.generate(
                    torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                    max_new_tokens=p.max_tokens, do_sample=sample,
                    temperature=p.temperature if sample else None, top_p=p.top_p if sample else None,
                    top_k=p.top_k if sample and p.top_k else None,
                    eos_token_id=p.stop_token_ids or None, pad_token_id=(p.stop_token_ids or [0])[0],
                    streamer=streamer,
                )
        except _Cancelled:
            pass
        except Exception as exc:  # hand the failure to the awaiting request instead of losing it
            streamer.loop.call_soon_threadsafe(streamer.queue.put_nowait, exc)
        finally:
            streamer.end()

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[dict]:
        """Yields {"token_ids": [...], "finish_reason": None | "stop" | "length"}; the last one has a reason."""
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()
        streamer = _QueueStreamer(asyncio.get_running_loop(), queue, cancelled)
        worker = threading.Thread(target=self._run, args=(prompt_ids, params, streamer), daemon=True)
        worker.start()
        produced, last = 0, None
        try:
            while True:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                if item is None:
                    break
                chunk = [item]
                while not queue.empty() and isinstance(queue._queue[0], list):  # coalesce what is ready
                    chunk.append(queue.get_nowait())
                ids = [t for c in chunk for t in c]
                produced, last = produced + len(ids), ids[-1]
                yield {"token_ids": ids, "finish_reason": None}
        finally:
            cancelled.set()  # client went away or the postprocessor hit a stop string
        last_is_stop = produced < params.max_tokens or last in params.stop_token_ids
        yield {"token_ids": [], "finish_reason": "stop" if last_is_stop else "length"}
