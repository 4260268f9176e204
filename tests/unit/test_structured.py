"""Structured outputs in the engine (engine/structured.py over llguidance), on a random-init GPT-2 with a BPE
tokenizer trained on the demo corpus: whatever the model's weights, every sampled output parses and
validates; constrained and unconstrained requests share batches without changing the unconstrained ones;
max_tokens is the only way an output may be incomplete; and the limits (bad schemas, huge specs, n > 1,
stop strings, logprobs, preemption, prefix caching) hold."""

from __future__ import annotations

import json
import re

import pytest
import torch

pytest.importorskip("llguidance", reason="structured outputs need llguidance: pip install llguidance")

from jsonschema import Draft202012Validator  # noqa: E402

from raygen.engine.engine import EngineConfig, LLMEngine  # noqa: E402
from raygen.engine.request import MAX_SPEC_CHARS, GrammarSpec, SamplingParams  # noqa: E402
from raygen.errors import GrammarError  # noqa: E402
from tests.structured_schemas import SCHEMAS  # noqa: E402

N = 200  # seeded outputs per schema


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import pydoc_data.topics
    from transformers import AutoModelForCausalLM, GPT2Config

    from raygen.data.features import train_tokenizer

    d = tmp_path_factory.mktemp("structured-model")
    tok = train_tokenizer(pydoc_data.topics.topics.values(), 1024, str(d))
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=512, vocab_size=len(tok), initializer_range=0.1,
                     bos_token_id=None, eos_token_id=None, pad_token_id=None)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def engine(model_dir):
    return LLMEngine(EngineConfig(model=model_dir, max_num_seqs=64, max_num_batched_tokens=1024, kv_cache_mib=64,
                                  max_num_waiting=None))


def prompt(engine, text="Return the record as JSON: "):
    return engine.tokenizer(text, add_special_tokens=False)["input_ids"]


def run(engine, params, prompts):
    return engine.generate(prompts, params)


def sampled(spec, max_tokens=256, seed0=0, n=N, **kw):
    return [SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=seed0 + i, structured=spec, **kw)
            for i in range(n)]


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_sampled_output_validates_against_its_schema(engine, name):
    schema = SCHEMAS[name]
    spec = GrammarSpec("json_schema", json.dumps(schema), "response_format")
    params = sampled(spec)
    outs = run(engine, params, [prompt(engine)] * N)
    validator = Draft202012Validator(schema)
    texts = set()
    for (o,) in outs:
        assert o.finish_reason == "stop", (o.finish_reason, o.text)  # complete well before max_tokens
        doc = json.loads(o.text)
        errors = list(validator.iter_errors(doc))
        assert not errors, (o.text, errors[0].message)
        texts.add(o.text)
    assert len(texts) > N // 2, "sampled outputs should differ: the grammar constrains, it does not decide"


def test_json_object_outputs_are_objects(engine):
    outs = run(engine, sampled(GrammarSpec("json_object"), n=50), [prompt(engine)] * 50)
    for (o,) in outs:
        if o.finish_reason == "stop":
            assert isinstance(json.loads(o.text), dict)
        else:  # free-form objects may nest deeper than max_tokens reaches: cut, and said so
            assert o.finish_reason == "length"
    assert sum(o.finish_reason == "stop" for (o,) in outs) >= 25


def test_choice_and_regex(engine):
    choices = ["yes", "no", "café \"au lait\"", "back\\slash"]
    outs = run(engine, sampled(GrammarSpec("choice", json.dumps(choices), "structured_outputs.choice")),
               [prompt(engine, "Answer: ")] * N)
    got = [o.text for (o,) in outs]
    assert set(got) <= set(choices) and len(set(got)) == len(choices), set(got)
    pattern = r"[A-Z]{2}-[0-9]{3,5}( [a-z]{1,6})?"  # bounded: a random model never stops on its own
    outs = run(engine, sampled(GrammarSpec("regex", pattern, "structured_outputs.regex")),
               [prompt(engine, "Code: ")] * N)
    for (o,) in outs:
        assert o.finish_reason == "stop" and re.fullmatch(pattern, o.text), o.text


def test_ebnf_grammar(engine):
    grammar = 'root ::= "(" expr ")"\nexpr ::= num (("+" | "*") num)*\nnum ::= [1-9] [0-9]?'
    outs = run(engine, sampled(GrammarSpec("grammar", grammar), max_tokens=64, n=50), [prompt(engine)] * 50)
    stopped = [o.text for (o,) in outs if o.finish_reason == "stop"]
    assert stopped and all(re.fullmatch(r"\([1-9][0-9]?([+*][1-9][0-9]?)*\)", t) for t in stopped), stopped


def test_mixed_batches_leave_unconstrained_requests_token_identical(engine):
    """Greedy and seeded sampled requests, alone and then sharing every step with constrained ones."""
    rng = torch.Generator().manual_seed(3)
    prompts = [torch.randint(5, 1000, (int(torch.randint(3, 40, (1,), generator=rng)),), generator=rng).tolist()
               for _ in range(12)]
    free = [SamplingParams(max_tokens=40, temperature=0.0 if i % 2 else 0.9, seed=i, ignore_eos=True)
            for i in range(12)]
    alone = run(engine, free, prompts)
    spec = GrammarSpec("json_schema", json.dumps(SCHEMAS["order"]))
    constrained = sampled(spec, n=24, seed0=500)
    together = run(engine, free + constrained, prompts + [prompt(engine)] * 24)
    assert [o.token_ids for (o,) in together[:12]] == [o.token_ids for (o,) in alone]
    for (o,) in together[12:]:
        Draft202012Validator(SCHEMAS["order"]).validate(json.loads(o.text))


def test_max_tokens_cuts_with_length_and_is_the_only_incomplete_output(engine):
    spec = GrammarSpec("json_schema", json.dumps(SCHEMAS["order"]))
    outs = run(engine, sampled(spec, max_tokens=6, n=40), [prompt(engine)] * 40)
    for (o,) in outs:
        if o.finish_reason == "length":
            assert len(o.token_ids) == 6
            with pytest.raises(json.JSONDecodeError):
                json.loads(o.text)
        else:
            assert o.finish_reason == "stop"
            json.loads(o.text)
    assert any(o.finish_reason == "length" for (o,) in outs)


def test_composes_with_n_stop_strings_logprobs_and_ignore_eos(engine):
    spec = GrammarSpec("json_schema", json.dumps(SCHEMAS["person"]))
    (outs,) = run(engine, [SamplingParams(max_tokens=128, temperature=1.0, seed=7, n=4, logprobs=2, structured=spec,
                                          ignore_eos=True)], [prompt(engine)])
    assert len(outs) == 4 and len({o.text for o in outs}) > 1
    for o in outs:
        assert o.finish_reason == "stop"  # complete: ends even though EOS is ignored
        Draft202012Validator(SCHEMAS["person"]).validate(json.loads(o.text))
        assert len(o.logprobs) == len(o.token_ids) and all(len(lp.top) == 2 for lp in o.logprobs)
    # A stop string ends the output where it appears, grammar or not (the user's choice).
    (o,), = run(engine, [SamplingParams(max_tokens=128, temperature=1.0, seed=7, structured=spec, stop=['"age"'])],
                [prompt(engine)])
    assert o.finish_reason == "stop" and '"age"' not in o.text and o.text.startswith("{")


def test_preemption_and_prefix_caching_keep_outputs_valid(model_dir):
    """A KV pool too small for the batch preempts (recomputes) constrained sequences mid-output: their grammar
    state survives, since the tokens they already produced are kept."""
    small = LLMEngine(EngineConfig(model=model_dir, max_num_seqs=32, max_num_batched_tokens=512, kv_cache_mib=0.5,
                                   block_size=8))
    spec = GrammarSpec("json_schema", json.dumps(SCHEMAS["order"]))
    long_prompt = prompt(small, "Shared instructions for every request. " * 8)
    outs = run(small, sampled(spec, n=48), [long_prompt] * 48)
    assert small.stats().num_preemptions > 0 and small.stats().prefix_hit_rate > 0
    for (o,) in outs:
        assert o.finish_reason == "stop", o.text
        Draft202012Validator(SCHEMAS["order"]).validate(json.loads(o.text))


@pytest.mark.parametrize("spec, message", [
    (GrammarSpec("json_schema", "{not json", "response_format.json_schema.schema"), "response_format"),
    (GrammarSpec("json_schema", json.dumps({"type": "object", "properties": {"a": {"type": "no-such-type"}}}),
                 "response_format.json_schema.schema"), "does not compile"),
    (GrammarSpec("regex", "([a-z", "structured_outputs.regex"), "structured_outputs.regex"),
    (GrammarSpec("grammar", "root ::= undefined_rule", "structured_outputs.grammar"), "does not compile"),
    (GrammarSpec("choice", "[]", "structured_outputs.choice"), "non-empty list"),
])
def test_bad_specs_are_refused_naming_the_field(engine, spec, message):
    with pytest.raises(GrammarError, match=re.escape(message)) as info:
        engine.compile_grammar(spec)
    assert info.value.param == spec.param
    with pytest.raises(GrammarError):  # add_request refuses it the same way, before anything is queued
        engine.add_request("bad-spec", prompt(engine), SamplingParams(structured=spec))
    assert not engine.has_unfinished()


def test_a_huge_spec_is_refused_before_compiling():
    with pytest.raises(GrammarError, match="at most"):
        GrammarSpec("regex", "a" * (MAX_SPEC_CHARS + 1), "structured_outputs.regex")


def test_compiles_are_cached_by_spec(engine):
    spec = GrammarSpec("json_schema", json.dumps(SCHEMAS["reading"]), "a")
    engine.compile_grammar(spec)
    grammars = engine.grammars()
    assert grammars.is_compiled(GrammarSpec("json_schema", json.dumps(SCHEMAS["reading"]), "another field"))
    assert not grammars.is_compiled(GrammarSpec("json_schema", json.dumps(SCHEMAS["person"]) + " "))
