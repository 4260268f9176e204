"""Labelers and the Label Studio round trip: fast, no Ray. The model labeler runs a tiny random BERT built here."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter

import numpy as np
import pytest

from raygen.data.label import (
    DEFAULT_TAXONOMY,
    DomainLabeler,
    LanguageLabeler,
    ModelLabeler,
    QualityLabeler,
    ToxicityLabeler,
    apply_labelers,
    build_labelers,
)
from raygen.data.label_studio import (
    allocate,
    export_label_studio,
    import_label_studio,
    label_studio_config,
    stratified_sample,
)
from raygen.data.langid import detect_language
from raygen.errors import ConfigError, DataError

SENTENCES = {
    "en": "The weather was lovely this morning, so we walked along the river and had breakfast in a small cafe.",
    "fr": "Il faisait beau ce matin, alors nous avons marché le long de la rivière et pris le petit déjeuner.",
    "de": "Heute Morgen war das Wetter schön, also sind wir am Fluss entlang gegangen und haben gefrühstückt.",
    "es": "Esta mañana hacía buen tiempo, así que caminamos por la orilla del río y desayunamos en un café.",
}


# ------------------------------------------------------------------------------------------- language


@pytest.mark.parametrize("lang", sorted(SENTENCES))
def test_detect_language_on_sentences(lang):
    got, score = detect_language(SENTENCES[lang])
    assert got == lang
    assert 0.5 < score <= 1.0


def test_detect_language_empty_and_prefix():
    assert detect_language("") == ("und", 0.0)
    assert detect_language("  \n\t ") == ("und", 0.0)
    # Only the prefix is read: English first, a long German tail after it.
    text = SENTENCES["en"] * 3 + " " + SENTENCES["de"] * 200
    assert detect_language(text, max_chars=300)[0] == "en"
    assert detect_language(text)[0] == "de"


def test_language_labeler_columns():
    batch = {"text": np.array([SENTENCES["fr"], "", SENTENCES["es"]], dtype=object), "doc_id": np.arange(3)}
    out = LanguageLabeler()(batch)
    assert list(out["lang"]) == ["fr", "und", "es"]
    assert out["lang_score"].dtype == np.float32 and out["lang_score"][1] == 0.0
    assert list(out["doc_id"]) == [0, 1, 2]  # the batch's columns stay
    strict = LanguageLabeler(min_score=1.01).label(batch)
    assert set(strict["lang"]) == {"und"}


# -------------------------------------------------------------------------------------------- quality


def test_quality_labeler_prefers_prose():
    prose = ("The committee reviewed the proposal and agreed that the new bridge should be built with "
             "steel rather than concrete, because steel would be easier to maintain over the years. ") * 3
    spam = "buy now $$$ 100% !!! 42 42 42 >>> click"
    out = QualityLabeler().label({"text": [prose, spam, ""]})["quality"]
    assert all(0.0 <= q <= 1.0 for q in out)
    assert out[0] > out[1] > out[2] == 0.0


# --------------------------------------------------------------------------------------------- domain

DOCS = {
    "code": "To define a function in Python use def; the function may return a value. Import the module, "
            "pass each argument and catch the exception the interpreter raises.",
    "law": "The court heard the appeal. The judge told the jury that the defendant breached the contract, "
           "and the plaintiff's attorney cited the statute.",
    "medicine": "The patient was admitted to the hospital with chronic symptoms; the doctor ordered a "
                "diagnosis and started a treatment with a new medication.",
    "finance": "Stocks fell as investors sold shares; the bank reported lower earnings and warned that "
               "inflation and interest rates would weigh on its bond portfolio.",
    "sports": "The team scored two goals in the second half, and the coach praised every player after the "
              "match that sent them to the championship.",
}


@pytest.mark.parametrize("domain", sorted(DOCS))
def test_domain_labeler_default_taxonomy(domain):
    assert DomainLabeler().domain(DOCS[domain]) == domain


def test_domain_labeler_other_and_thresholds():
    labeler = DomainLabeler()
    recipe = "Whisk the eggs with sugar, fold in the flour and bake the cake for forty minutes until golden."
    assert labeler.domain(recipe) == "other"
    assert labeler.domain("") == "other"
    one_hit = "We wrote one function yesterday and then went for a long walk in the hills."
    assert labeler.domain(one_hit) == "other"  # a single keyword is below min_hits
    assert DomainLabeler(min_hits=1, min_rate=0).domain(one_hit) == "code"
    diluted = DOCS["law"] + " " + "lorem " * 5000  # 6 hits in ~5000 words: ~1 per 1000 words
    assert labeler.domain(diluted) == "other"
    assert DomainLabeler(min_rate=0.5).domain(diluted) == "law"


def test_domain_labeler_custom_taxonomy_phrases_and_ties():
    labeler = DomainLabeler({"cooking": ["bake", "olive oil"], "garden": ["soil", "seeds"]},
                            min_hits=1, min_rate=0, fallback="misc")
    assert labeler.domain("Pour the olive oil, then bake.") == "cooking"  # a phrase counts once
    assert labeler.domain("Olive trees like dry soil. Oil the hinge.") == "garden"  # not a phrase: no match
    assert labeler.domain("Bake the seeds.") == "cooking"  # tie: the domain listed first
    assert labeler.domain("Nothing here.") == "misc"
    out = labeler({"text": ["Bake it.", "Sow the seeds in soil."]})
    assert list(out["domain"]) == ["cooking", "garden"]
    with pytest.raises(ConfigError, match="list of keywords"):
        DomainLabeler({"x": "bake"})
    with pytest.raises(ConfigError, match="no letters"):
        DomainLabeler({"x": ["!!"]})
    assert "other" not in DEFAULT_TAXONOMY


# ------------------------------------------------------------------------------------------- toxicity


def test_toxicity_labeler(tmp_path):
    labeler = ToxicityLabeler()
    clean = "Thanks for the review, I will update the patch tomorrow morning."
    rude = "You absolute idiot, this is bullshit."
    out = labeler.label({"text": [clean, rude, ""]})
    assert out["toxicity"][0] == 0.0 and out["toxicity"][2] == 0.0
    assert out["toxicity"][1] == pytest.approx(2 / 6)
    assert list(out["toxic"]) == [False, True, False]
    long_mild = "idiot " + "fine words here " * 100  # one hit in 301 words: under the 1% default
    assert not labeler.label({"text": [long_mild]})["toxic"][0]
    custom = ToxicityLabeler(words=["rotten tomato"], threshold=0.2)
    assert custom.toxicity("A rotten tomato!") == pytest.approx(1 / 3)
    assert custom.toxicity("Rotten apples, ripe tomato.") == 0.0
    words_file = tmp_path / "words.txt"
    words_file.write_text("# house list\nfoobar\n\n")
    assert ToxicityLabeler(words_file=str(words_file)).toxicity("so foobar") == 0.5
    with pytest.raises(ConfigError, match="words_file"):
        ToxicityLabeler(words_file=str(tmp_path / "missing.txt"))
    with pytest.raises(ConfigError, match="empty"):
        ToxicityLabeler(words=[])


# ------------------------------------------------------------------------------ running and config


def test_apply_and_build_labelers():
    labelers = build_labelers([{"kind": "language"}, {"kind": "quality"},
                               {"kind": "domain", "min_hits": 1}, {"kind": "toxicity", "threshold": 0.5}])
    batch = {"text": np.array([DOCS["code"], SENTENCES["de"]], dtype=object), "doc_id": np.array([7, 8])}
    out = apply_labelers(batch, labelers)
    assert set(out) == {"text", "doc_id", "lang", "lang_score", "quality", "domain", "toxicity", "toxic"}
    assert all(len(v) == 2 for v in out.values())
    assert list(out["lang"]) == ["en", "de"] and out["domain"][0] == "code"
    assert labelers[2].min_hits == 1 and labelers[3].threshold == 0.5
    with pytest.raises(DataError, match="'text' column"):
        apply_labelers({"body": ["x"]}, labelers)


@pytest.mark.parametrize(("specs", "message"), [
    ([{"kind": "sentiment"}], "unknown kind 'sentiment'"),
    ([{"taxonomy": {}}], "expected a mapping with a 'kind'"),
    (["language"], "expected a mapping"),
    ([{"kind": "domain", "taxonomi": {}}], r"unknown option\(s\) \['taxonomi'\]"),
    ([{"kind": "model", "name": "topic"}], r"missing option\(s\) \['path'\]"),
    ([{"kind": "model", "path": "/no/such/model"}], "not a local model directory"),
    ([{"kind": "language"}, {"kind": "language"}], "writes column 'lang'"),
])
def test_build_labelers_errors(specs, message):
    with pytest.raises(ConfigError, match=message):
        build_labelers(specs)


# ---------------------------------------------------------------------------------------------- model

LABELS = {0: "news", 1: "code", 2: "chat"}


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """A random 1-layer BERT classifier and a word-level tokenizer trained here, saved like a real model."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny_classifier")
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = [*SENTENCES.values(), *DOCS.values()]
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"], show_progress=False))
    specials = [(t, tok.token_to_id(t)) for t in ("[CLS]", "[SEP]")]
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=specials)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                     sep_token="[SEP]", model_max_length=64)
    hf_tok.save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=hf_tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64, num_labels=3, id2label=LABELS,
                        label2id={v: k for k, v in LABELS.items()}, pad_token_id=hf_tok.pad_token_id,
                        initializer_range=0.5)  # wide weights: distinct logits, so the top label is stable
    BertForSequenceClassification(config).save_pretrained(path)
    return str(path)


def test_model_labeler_matches_unbatched_model(tiny_classifier):
    import torch

    texts = [DOCS["finance"], "", "short words", SENTENCES["en"] * 20, DOCS["code"], "zzz unknown"]
    labeler = ModelLabeler(path=tiny_classifier, name="topic", batch_size=2)
    batch = {"text": np.array(texts, dtype=object), "doc_id": np.arange(len(texts))}
    out = labeler(batch)
    assert list(out["doc_id"]) == list(range(len(texts)))
    assert labeler.columns == ("topic", "topic_score")
    assert out["topic_score"].dtype == np.float32
    # Reference: one text at a time, no padding, same truncation.
    for i, text in enumerate(texts):
        enc = labeler.tokenizer([text], truncation=True, max_length=64, return_tensors="pt")
        with torch.inference_mode():
            probs = labeler.model(**enc).logits.softmax(-1)[0]
        assert out["topic"][i] == LABELS[int(probs.argmax())]
        assert out["topic_score"][i] == pytest.approx(float(probs.max()), abs=1e-4)
    assert set(out["topic"]) <= set(LABELS.values())
    assert 1 / 3 <= out["topic_score"].min() and out["topic_score"].max() <= 1.0


def test_model_labeler_from_spec_and_empty_batch(tiny_classifier):
    (labeler,) = build_labelers([{"kind": "model", "path": tiny_classifier, "name": "kind", "max_length": 8}])
    assert labeler.max_length == 8
    out = labeler.label({"text": []})
    assert out["kind"].shape == (0,) and out["kind_score"].shape == (0,)
    mixed = apply_labelers({"text": [DOCS["sports"]]}, [labeler, *build_labelers([{"kind": "language"}])])
    assert set(mixed) == {"text", "kind", "kind_score", "lang", "lang_score"}


# --------------------------------------------------------------------------------------- Label Studio


def _rows(sizes: dict[str, int]) -> list[dict]:
    return [{"doc_id": f"{d}-{i}", "text": f"document {i} about {d}", "domain": d}
            for d, n in sizes.items() for i in range(n)]


def test_allocate_proportional_with_one_per_stratum():
    assert allocate({"a": 700, "b": 250, "c": 50}, 100) == {"a": 70, "b": 25, "c": 5}
    take = allocate({"a": 996, "b": 2, "c": 2}, 10)
    assert take == {"a": 8, "b": 1, "c": 1}
    assert allocate({"a": 5, "b": 1}, 100) == {"a": 5, "b": 1}  # everything when the sample is bigger
    assert sum(allocate({"a": 3, "b": 3, "c": 3}, 2).values()) == 2  # fewer slots than strata
    take = allocate({"a": 10, "b": 1}, 4)
    assert take == {"a": 3, "b": 1}  # capped: b cannot give more than it holds


def test_stratified_sample_is_deterministic_and_order_free():
    rows = _rows({"code": 600, "law": 300, "sports": 97, "news": 3})
    picked = stratified_sample(rows, 50, "domain", seed=1)
    assert Counter(rows[i]["domain"] for i in picked) == {"code": 30, "law": 15, "sports": 4, "news": 1}
    assert picked == stratified_sample(rows, 50, "domain", seed=1)
    reversed_rows = rows[::-1]
    again = stratified_sample(reversed_rows, 50, "domain", seed=1)
    assert [reversed_rows[i]["doc_id"] for i in again] == [rows[i]["doc_id"] for i in picked]
    assert set(stratified_sample(rows, 50, "domain", seed=2)) != set(picked)
    assert len(stratified_sample(rows, 20, None, seed=0)) == 20


def test_label_studio_round_trip(tmp_path):
    rows = _rows({"code": 40, "law": 15, "news": 5})
    rows[0]["domain"] = np.str_("code")  # numpy values from a Ray batch must serialize
    path = tmp_path / "ls" / "tasks.json"
    tasks = export_label_studio(rows, str(path), sample_size=12, stratify_by="domain", seed=3)
    written = json.loads(path.read_text())
    assert written == tasks and len(tasks) == 12
    assert [t["id"] for t in tasks] == list(range(1, 13))
    assert set(tasks[0]) == {"id", "data"} and set(tasks[0]["data"]) == {"text", "doc_id", "domain"}
    assert Counter(t["data"]["domain"] for t in tasks) == {"code": 8, "law": 3, "news": 1}
    by_id = {r["doc_id"]: r for r in rows}
    assert all(by_id[t["data"]["doc_id"]]["text"] == t["data"]["text"] for t in tasks)

    config = ET.fromstring(label_studio_config(["good", "bad"]))
    assert [c.get("value") for c in config.iter("Choice")] == ["good", "bad"]
    assert config.find("Choices").get("name") == "label"

    # What Label Studio's JSON export looks like after annotation (trimmed to the fields we read).
    def result(choice, from_name="label"):
        return {"from_name": from_name, "to_name": "text", "type": "choices", "value": {"choices": [choice]}}

    def ann(ann_id, *results, when="2026-01-01T00:00:00Z", cancelled=False):
        return {"id": ann_id, "result": list(results), "was_cancelled": cancelled, "created_at": when}

    export = []
    for n, task in enumerate(tasks):
        anns = []
        if n == 0:  # two annotators: the later one wins
            anns = [ann(1, result("bad"), when="2026-01-02T10:00:00Z"), ann(2, result("good"))]
        elif n == 1:  # a cancelled (skipped) annotation does not count, however late
            anns = [ann(3, result("bad"), when="2026-01-03T00:00:00Z", cancelled=True), ann(4, result("good"))]
        elif n == 2:  # another control first, then ours
            anns = [ann(5, result("x", "other_tag"), result("bad"))]
        elif n < 8:
            anns = [ann(10 + n, result("good" if n % 2 else "bad"))]
        export.append({**task, "annotations": anns, "predictions": [], "project": 1})  # n >= 8: not annotated
    full = tmp_path / "export.json"
    full.write_text(json.dumps(export))
    labels = import_label_studio(str(full))
    doc = [t["data"]["doc_id"] for t in tasks]
    assert labels == {doc[0]: "bad", doc[1]: "good", doc[2]: "bad", doc[3]: "good", doc[4]: "bad",
                      doc[5]: "good", doc[6]: "bad", doc[7]: "good"}
    assert import_label_studio(str(full), from_name=None)[doc[2]] == "x"  # the first Choices tag

    # JSON-MIN: one flat record per annotation, data fields at the top level.
    minimal = [{**t["data"], "id": t["id"], "label": "good", "annotator": 1, "annotation_id": t["id"],
                "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z", "lead_time": 2.5}
               for t in tasks[:3]]
    minimal.append({**minimal[0], "label": "bad", "updated_at": "2026-02-01T00:00:00Z"})  # edited later
    minimal.append({**tasks[3]["data"], "id": 4, "label": {"choices": ["good", "bad"]}})  # multiple choice
    minimal.append({**tasks[4]["data"], "id": 5})  # annotated, but not this tag
    min_path = tmp_path / "export_min.json"
    min_path.write_text(json.dumps(minimal))
    assert import_label_studio(str(min_path)) == {doc[0]: "bad", doc[1]: "good", doc[2]: "good",
                                                  doc[3]: ["good", "bad"]}


def test_label_studio_errors(tmp_path):
    rows = _rows({"a": 3})
    with pytest.raises(DataError, match="no 'doc_id'"):
        export_label_studio([{"text": "x"}], str(tmp_path / "t.json"), 1)
    with pytest.raises(DataError, match="not unique"):
        export_label_studio(rows + rows[:1], str(tmp_path / "t.json"), 2)
    with pytest.raises(DataError, match="at least 1"):
        export_label_studio(rows, str(tmp_path / "t.json"), 0)
    with pytest.raises(DataError, match="stratify_by column 'domian'"):
        export_label_studio(rows, str(tmp_path / "t.json"), 2, stratify_by="domian")

    def write(content: str):
        p = tmp_path / "bad.json"
        p.write_text(content)
        return str(p)

    with pytest.raises(DataError, match="not a JSON file"):
        import_label_studio(write("{not json"))
    with pytest.raises(DataError, match="expected a JSON list"):
        import_label_studio(write('"tasks"'))
    with pytest.raises(DataError, match="not an object"):
        import_label_studio(write("[1, 2]"))
    with pytest.raises(DataError, match="no 'result' list"):
        import_label_studio(write(json.dumps([{"data": {"doc_id": 1}, "annotations": [{"id": 1}]}])))
    with pytest.raises(DataError, match="expected Choices"):
        import_label_studio(write(json.dumps([{"data": {"doc_id": 1}, "annotations": [
            {"result": [{"from_name": "label", "value": {"choices": 3}}]}]}])))
    with pytest.raises(DataError, match="no data.doc_id"):
        import_label_studio(write(json.dumps([{"data": {"text": "x"}, "annotations": [
            {"result": [{"from_name": "label", "value": {"choices": ["a"]}}]}]}])))
    with pytest.raises(DataError, match="JSON-MIN"):
        import_label_studio(write(json.dumps([{"doc_id": 1, "label": "a"}])), from_name=None)
    with pytest.raises(DataError, match="cannot read"):
        import_label_studio(str(tmp_path / "missing.json"))
    assert import_label_studio(write(json.dumps([{"id": 1, "data": {"doc_id": 1}, "annotations": []}]))) == {}
