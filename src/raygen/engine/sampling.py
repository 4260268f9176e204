"""Batched sampling: penalties, temperature, top-k, top-p, min-p, per-request seeds, logprobs.

torch only (no model, no Ray). Each row of the batch has its own parameters; a seeded row draws from its
own torch.Generator, so its tokens do not depend on what else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    min_p: float = 0.0  # keep tokens with p >= min_p × p(max)
    repetition_penalty: float = 1.0  # HF semantics: divide positive logits of seen tokens, multiply negative
    presence_penalty: float = 0.0  # OpenAI semantics, over generated tokens
    frequency_penalty: float = 0.0
    seed: int | None = None
    logprobs: int | None = None  # top-N alternatives to return per token
    ignore_eos: bool = False

    def __post_init__(self):
        checks = [
            (self.max_tokens >= 1, "max_tokens must be >= 1"),
            (0 <= self.temperature <= 2, "temperature must be in [0, 2]"),
            (self.top_k >= 0, "top_k must be >= 0 (0 disables it)"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (-2 <= self.presence_penalty <= 2, "presence_penalty must be in [-2, 2]"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty must be in [-2, 2]"),
            (self.logprobs is None or 0 <= self.logprobs <= 20, "logprobs must be in [0, 20]"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)


def apply_penalties(logits: torch.Tensor, params: list[SamplingParams], prompt_ids: list[list[int]],
                    output_ids: list[list[int]]) -> torch.Tensor:
    """logits: (B, V) float32, modified in place row by row where a penalty is set."""
    for i, p in enumerate(params):
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(prompt_ids[i]) | set(output_ids[i])), dtype=torch.long,
                                device=logits.device)
            if len(seen):
                vals = logits[i, seen]
                logits[i, seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if (p.presence_penalty or p.frequency_penalty) and output_ids[i]:
            ids, counts = torch.tensor(output_ids[i], device=logits.device).unique(return_counts=True)
            logits[i, ids] -= p.presence_penalty + p.frequency_penalty * counts.to(logits.dtype)
    return logits


def filter_logits(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                  min_p: torch.Tensor) -> torch.Tensor:
    """Mask to -inf every token outside each row's top-k / top-p nucleus / min-p floor.
    logits (B, V); top_k (B,) long, 0 = off; top_p (B,); min_p (B,)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
    v = logits.shape[-1]
    rank = torch.arange(v, device=logits.device).expand_as(sorted_logits)
    k = torch.where(top_k > 0, top_k, torch.full_like(top_k, v)).unsqueeze(1)
    drop = rank >= k
    probs = sorted_logits.softmax(dim=-1)
    # Nucleus: drop a token when the mass strictly before it already reaches top_p (the top token stays).
    drop |= (probs.cumsum(dim=-1) - probs) >= top_p.unsqueeze(1)
    drop |= probs < (min_p.unsqueeze(1) * probs[:, :1])
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
           ) -> torch.Tensor:
    """One token per row. logits (B, V) after penalties. Greedy rows take argmax; others draw from the
    filtered, temperature-scaled distribution with their own generator when seeded."""
    device = logits.device
    greedy = torch.tensor([p.temperature == 0 for p in params], device=device)
    temps = torch.tensor([p.temperature or 1.0 for p in params], device=device).unsqueeze(1)
    filtered = filter_logits(
        logits / temps,
        torch.tensor([p.top_k for p in params], device=device),
        torch.tensor([p.top_p for p in params], device=device),
        torch.tensor([p.min_p for p in params], device=device),
    )
    probs = filtered.softmax(dim=-1)
    out = logits.argmax(dim=-1)
    for i in range(len(params)):
        if not greedy[i]:
            # Exponential race (Gumbel-max in another form): argmax p / E, E ~ Exp(1), drawn per row.
            e = torch.empty_like(probs[i]).exponential_(generator=generators[i])
            out[i] = (probs[i] / e).argmax()
    return out


def top_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                                torch.Tensor]:
    """(logprob of each chosen token (B,), top-n logprobs (B, n), their ids (B, n)) from raw logits."""
    lp = logits.float().log_softmax(dim=-1)
    chosen = lp.gather(1, token_ids.unsqueeze(1)).squeeze(1)
    top = lp.topk(n, dim=-1) if n else (lp[:, :0], lp[:, :0].long())
    return chosen, top[0], top[1]
