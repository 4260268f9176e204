"""Preprocessor deployment: tokenization, chat templates, prompt policy (system prompt, truncation),
parameter configuration (defaults, limits) and the input safety check."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from opentelemetry import trace
from ray import serve

from raygen.engine.request import SamplingParams
from raygen.errors import EngineSetupError, RequestError
from raygen.serve.config import SafetySettings
from raygen.observability.config import ObservabilitySettings
from raygen.observability.metrics import record
from raygen.observability.process import init_process
from raygen.observability.tracing import SpanSource, extract, tracer
from raygen.registry import local_model_dir
from raygen.serve.protocol import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest
from raygen.serve.safety import SafetyFilter, hf_classifier
from raygen.serve.tools import pick_parser

log = logging.getLogger(__name__)

# Used when the tokenizer brings no chat template (raygen's own BPE tokenizers do not). Tools are listed in a
# system block and called with Hermes-style markup (serve/tools.py parses it); without tools it renders as it
# always did.
DEFAULT_CHAT_TEMPLATE = (
    "{% if tools %}<|system|>\nTools you can call. To call one, answer with <tool_call>{\"name\": ..., "
    "\"arguments\": {...}}</tool_call>, one block per call.\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}"
    "{% endif %}"
    "{% for m in messages %}<|{{ m['role'] }}|>\n"
    "{% if m.tool_calls is defined and m.tool_calls %}{% for c in m.tool_calls %}<tool_call>"
    "{\"name\": {{ c.function.name | tojson }}, \"arguments\": {{ c.function.arguments | tojson }}}</tool_call>"
    "{% endfor %}{% else %}{{ m['content'] }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def context_window(model_dir: str | Path) -> int:
    cfg = json.loads(Path(model_dir, "config.json").read_text())
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        if key in cfg:
            return int(cfg[key])
    raise EngineSetupError(f"{model_dir}/config.json names no context length")


def build_safety(cfg: SafetySettings) -> SafetyFilter:
    """serve.safety → SafetyFilter; the classifier loads here when configured."""
    clf = hf_classifier(cfg.classifier, cfg.classifier_labels, cfg.classifier_threshold) if cfg.classifier else None
    return SafetyFilter(cfg.blocklist, cfg.patterns, cfg.redact_pii, clf, pii_kinds=tuple(cfg.pii_kinds))


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class Preprocessor(SpanSource):
    def __init__(self, model_dir: str, max_tokens_default: int, max_tokens_limit: int, system_prompt: str | None = None,
                 truncation: str = "error", safety: SafetySettings | None = None, max_prompt_tokens: int | None = None,
                 model_name: str = "model", observability: ObservabilitySettings | None = None,
                 tool_parser: str = "auto"):
        from transformers import AutoTokenizer

        init_process(observability, "raygen-preprocessor")
        self.model_name = model_name
        model_dir = local_model_dir(model_dir)  # a registry version's URI: copied to this node once
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.chat_template = self.tokenizer.chat_template or DEFAULT_CHAT_TEMPLATE
        self.tool_parser = pick_parser(tool_parser, self.chat_template)
        self.context = context_window(model_dir)
        self.max_tokens_default = max_tokens_default
        self.max_tokens_limit = max_tokens_limit
        self.system_prompt = system_prompt
        self.truncation = truncation
        self.max_prompt_tokens = max_prompt_tokens
        self.safety = build_safety(safety) if safety else None
        self.refused: Counter[str] = Counter()  # safety rule -> prompts it refused


    def safety_stats(self) -> dict[str, int]:
        return dict(self.refused)

    def tool_parser_name(self) -> str:
        """The parser of tool calls under tool_choice auto (serve/tools.py), as configured or picked."""
        return self.tool_parser

    def _check_input(self, text: str) -> None:
        v = self.safety.violation(text, "input") if self.safety else None
        if v:
            self.refused[v.rule] += 1
            record("raygen_safety_blocks_total", model=self.model_name, rule=v.rule, side="input")
            trace.get_current_span().add_event("safety.refused", {"rule": v.rule})
            log.warning("safety: input refused by %s", v.rule)
            raise RequestError("the prompt was refused by this server's content policy", param="prompt",
                               code="content_policy_violation")

    def prepare(self, req: CompletionRequest, trace: dict | None = None) -> tuple[list[int], SamplingParams]:
        """trace: the caller's W3C trace context (RequestObserver.carrier()); this hop's span joins it."""
        with tracer().start_as_current_span("preprocess", context=extract(trace)) as span:
            ids, params = self._prepare(req)
            span.set_attribute("raygen.prompt_tokens", len(ids))
            return ids, params

    def prepare_chat(self, req: ChatCompletionRequest, trace: dict | None = None
                     ) -> tuple[list[int], SamplingParams]:
        with tracer().start_as_current_span("preprocess", context=extract(trace)) as span:
            ids, params = self._prepare_chat(req)
            span.set_attribute("raygen.prompt_tokens", len(ids))
            return ids, params

    def _messages(self, messages) -> list[dict]:
        """Chat messages as the template takes them, with serve.system_prompt in front when they have none."""
        out = [m.template_dict() for m in messages]
        if self.system_prompt and out and out[0]["role"] not in ("system", "developer"):
            out.insert(0, {"role": "system", "content": self.system_prompt})
        return out

    def _chat_text(self, messages: list[dict], add_generation_prompt: bool = True, tools=None) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt, tools=tools)
        except Exception as exc:  # templates raise on role orders they do not support
            raise RequestError(f"messages: {exc}", param="messages") from exc

    def tokenize(self, req: TokenizeRequest) -> dict:
        """POST /tokenize: the ids a prompt (or chat messages, templated as a chat request would be) becomes.
        add_special_tokens defaults to true for a prompt and false for messages (the template writes them), as
        vLLM's."""
        if req.messages is not None:
            text = self._chat_text(self._messages(req.messages), req.add_generation_prompt)
            special = req.add_special_tokens if "add_special_tokens" in req.model_fields_set else False
            ids = self.tokenizer(text, add_special_tokens=special)["input_ids"]
        else:
            ids = self.tokenizer(req.prompt, add_special_tokens=req.add_special_tokens)["input_ids"]
        out = {"count": len(ids), "max_model_len": self.context, "tokens": ids}
        if req.return_token_strs:
            out["token_strs"] = self.tokenizer.convert_ids_to_tokens(ids)
        return out

    def tokenizer_info(self) -> dict:
        """GET /tokenizer_info (vLLM's): the special tokens, the chat template and the context, for clients that
        tokenize remotely (lm-evaluation-harness' remote tokenizer)."""
        t = self.tokenizer
        return {"tokenizer_class": type(t).__name__, "eos_token": t.eos_token, "bos_token": t.bos_token,
                "pad_token": t.pad_token, "unk_token": t.unk_token, "chat_template": self.chat_template,
                "model_max_length": self.context, "vocab_size": len(t)}

    def detokenize(self, req: DetokenizeRequest) -> dict:
        """POST /detokenize: the text of token ids (ids outside the vocabulary are a 400 naming them)."""
        bad = [t for t in req.tokens if not 0 <= t < len(self.tokenizer)]
        if bad:
            raise RequestError(f"token ids {bad[:5]} are outside the vocabulary (0..{len(self.tokenizer) - 1})",
                               param="tokens")
        return {"prompt": self.tokenizer.decode(req.tokens)}

    def _prepare(self, req: CompletionRequest) -> tuple[list[int], SamplingParams]:
        if isinstance(req.prompt, str):
            self._check_input(req.prompt)
            ids = self.tokenizer(req.prompt, add_special_tokens=False)["input_ids"]
        else:
            ids = list(req.prompt)
            bad = [t for t in ids if not 0 <= t < len(self.tokenizer)]
            if bad:
                raise RequestError(f"prompt token ids {bad[:5]} are outside the vocabulary "
                                   f"(0..{len(self.tokenizer) - 1})", param="prompt")
            self._check_input(self.tokenizer.decode(ids))
        return self._finish(ids, req, req.max_tokens)

    def _prepare_chat(self, req: ChatCompletionRequest) -> tuple[list[int], SamplingParams]:
        messages = self._messages(req.messages)
        self._check_input("\n".join(m["content"] for m in messages if m["role"] != "assistant"))
        tools = [{"type": "function", "function": f} for f in req.function_defs] or None
        ids = self.tokenizer(self._chat_text(messages, tools=tools), add_special_tokens=False)["input_ids"]
        return self._finish(ids, req, req.max_completion_tokens or req.max_tokens)

    def _finish(self, ids: list[int], req, max_tokens: int | None) -> tuple[list[int], SamplingParams]:
        if not ids:
            raise RequestError("prompt encodes to zero tokens", param="prompt")
        if self.max_prompt_tokens and len(ids) > self.max_prompt_tokens:
            raise RequestError(f"the prompt has {len(ids)} tokens; this server takes at most {self.max_prompt_tokens}",
                               status=413, param="prompt", code="prompt_too_large")
        if max_tokens == 0:  # echo alone: generate one token, which the postprocessor drops (Echo.keep_output)
            max_tokens = 1
        max_tokens = max_tokens or self.max_tokens_default
        if max_tokens > self.max_tokens_limit:
            raise RequestError(f"max_tokens {max_tokens} exceeds this server's limit of {self.max_tokens_limit}",
                               param="max_tokens")
        if len(ids) + max_tokens > self.context:
            if self.truncation == "left" and max_tokens < self.context:
                ids = ids[len(ids) + max_tokens - self.context:]  # keep the most recent tokens
            else:
                raise RequestError(
                    f"this model's context window is {self.context} tokens; the prompt has {len(ids)} and "
                    f"max_tokens is {max_tokens}: shorten the prompt or lower max_tokens", status=400,
                    param="prompt", code="context_length_exceeded")
        bias = req.token_bias
        if bias and max(bias) >= len(self.tokenizer):
            raise RequestError(f"logit_bias: token id {max(bias)} is outside the vocabulary "
                               f"(0..{len(self.tokenizer) - 1})", param="logit_bias")
        try:
            return ids, SamplingParams(
                max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
                min_p=req.min_p, repetition_penalty=req.repetition_penalty, presence_penalty=req.presence_penalty,
                frequency_penalty=req.frequency_penalty, seed=req.seed, n=req.n, stop=req.stop or [],
                ignore_eos=req.ignore_eos, logprobs=req.num_logprobs, logit_bias=bias, structured=req.grammar_spec,
                prompt_logprobs=req.num_prompt_logprobs)
        except ValueError as exc:
            raise RequestError(str(exc)) from exc
