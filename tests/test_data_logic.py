import numpy as np
import pytest

from raygen.data import clean, sources
from raygen.data.features import STATS_SPLIT, pack, tokenize_and_pack, train_tokenizer
from raygen.errors import DataError


def test_clean_text_normalizes_and_keeps_indentation():
    raw = "ﬁle\r\n\r\n\r\n\r\n    indented  \t\nctrl\x00\x07char\x85 "
    out = clean.clean_text(raw, "NFKC")
    assert out == "file\n\n    indented\nctrlchar"


def test_drop_reasons_and_hash():
    assert clean.drop_reason("", 5) == clean.DROP_EMPTY
    assert clean.drop_reason("abc", 5) == clean.DROP_TOO_SHORT
    assert clean.drop_reason("abcdef", 5) == ""
    assert clean.content_hash("x") == clean.content_hash("x") != clean.content_hash("y")


def test_val_split_is_deterministic_and_proportional():
    hashes = [clean.content_hash(str(i)) for i in range(4000)]
    val = [clean.in_val_split(h, 0.1) for h in hashes]
    assert val == [clean.in_val_split(h, 0.1) for h in hashes]
    assert 0.08 < sum(val) / len(val) < 0.12


def test_pack_inserts_eos_and_counts_tail():
    blocks, tail = pack([[1, 2, 3], [4, 5]], eos_id=0, block_size=3)
    assert blocks.tolist() == [[1, 2, 3], [0, 4, 5]]
    assert tail == 1  # the final EOS
    blocks, tail = pack([[1]], eos_id=0, block_size=4)
    assert blocks.shape == (0, 4) and tail == 2


def test_builtin_corpus_and_file_listing(tmp_path):
    docs = sources.builtin_documents()
    assert len(docs) > 50 and all(d["source"].startswith("builtin:") for d in docs)
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text("{}")
    (tmp_path / "c.bin").write_bytes(b"\0")
    text, jsonl = sources.list_files([str(tmp_path)])
    assert [p.endswith("a.txt") for p in text] == [True] and jsonl[0].endswith("b.jsonl")
    with pytest.raises(DataError, match="does not exist"):
        sources.list_files([str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .txt"):
        sources.list_files([str(tmp_path / "empty")])


def test_jsonl_parsing_marks_bad_lines():
    batch = {"text": np.array(['{"text": "hello"}', "{not json", '{"body": 1}'], dtype=object),
             "path": np.array(["f"] * 3, dtype=object)}
    out = sources._parse_jsonl(batch, "text")
    assert list(out["drop_reason"]) == ["", sources.DROP_BAD_JSON, sources.DROP_NO_TEXT]
    assert out["text"][0] == "hello"


def test_tokenizer_roundtrip_and_packing_accounting(tmp_path):
    texts = [d["text"] for d in sources.builtin_documents()[:20]]
    tok = train_tokenizer(iter(texts), 600, str(tmp_path / "tok"))
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token_id is not None
    sample = "def f(x):\n    return x  # ünïcode ✓"
    assert tok.decode(tok(sample)["input_ids"]) == sample
    hashes = [clean.content_hash(t) for t in texts]
    out = tokenize_and_pack({"text": np.array(texts, dtype=object), "hash": np.array(hashes, dtype=object)},
                            str(tmp_path / "tok"), 32, 0.2)
    blocks = out["split"] != STATS_SPLIT
    total = sum(len(tok(t)["input_ids"]) + 1 for t in texts)
    assert out["doc_tokens"].sum() == total
    assert blocks.sum() * 32 + out["tail_tokens"].sum() == total  # every token is in a block or counted
    assert set(out["split"][blocks]) == {"train", "val"}
