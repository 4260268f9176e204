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
    docs = sources.builtin_documents("now")
    assert len(docs) > 50 and all(d["source"].startswith("builtin:") and d["license"] for d in docs)
    assert len({d["doc_id"] for d in docs}) == len(docs) and sources.doc_id("a", 1) == sources.doc_id("a", 1)
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl.gz").write_bytes(b"")
    (tmp_path / "c.bin").write_bytes(b"\0")
    files = sources._expand(str(tmp_path))
    assert [f.rsplit("/", 1)[1] for f in files] == ["a.txt", "b.jsonl.gz"]
    assert sources._expand(str(tmp_path / "**" / "*.gz")) == files[1:]
    assert sources._expand("s3://bucket/corpus/") == ["s3://bucket/corpus/"]  # listed by Ray's reader
    with pytest.raises(DataError, match="does not exist"):
        sources._expand(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no"):
        sources._expand(str(tmp_path / "empty"))


@pytest.mark.parametrize("name,fmt,comp", [("a.jsonl.gz", "jsonl", "gzip"), ("b.PARQUET", "parquet", None),
                                           ("c.html", "html", None), ("d.csv.zst", "csv", "zstd"),
                                           ("e.bin", None, None), ("https://x.org/f.md?v=1", "text", None)])
def test_file_format_from_name(name, fmt, comp):
    assert sources.file_format(name) == (fmt, comp)


def test_every_format_parses_and_bad_records_are_booked_not_lost():
    import gzip
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = b'{"text": "hello"}\n{not json\n\n{"body": 1}\n'
    assert sources.parse_file(jsonl, "f", "jsonl", "text") == [
        (0, "hello", ""), (1, "{not json", sources.DROP_BAD_JSON), (3, '{"body": 1}', sources.DROP_NO_TEXT)]
    assert [r[1:] for r in sources.parse_file(b'[{"t": "a"}, {"t": "b"}]', "f", "json", "t")] == [("a", ""), ("b", "")]
    assert sources.parse_file(b"id,body\n1,hi there\n", "f", "csv", "body") == [(0, "hi there", "")]
    assert sources.parse_file(b"id,body\n1,x\n", "f", "csv", "text")[0][2] == sources.DROP_NO_TEXT
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": ["one", "", "three"]}), buf)
    assert [r[2] for r in sources.parse_file(buf.getvalue(), "f", "parquet", "text")] == ["", "no_text_field", ""]
    assert sources.parse_file(b"not parquet", "f", "parquet", "text")[0][2] == sources.DROP_BAD_FILE
    assert sources.parse_file(b"  \n", "f", "text", "text")[0][2] == sources.DROP_EMPTY_FILE
    assert sources.parse_file(b"\xff\xfe bad", "f", "text", "text")[0][2] == sources.DROP_UNDECODABLE
    assert sources.decompress(gzip.compress(b"abc"), "gzip") == b"abc"
    assert sources.decompress(b"abc", "gzip") == b"abc"  # already inflated by the reader


def test_mixing_weights_repeat_documents_deterministically():
    from raygen.data.features import repeats

    hashes = [clean.content_hash(str(i)) for i in range(4000)]
    assert all(repeats(1.0, h) == 1 for h in hashes) and all(repeats(2.0, h) == 2 for h in hashes)
    mean = sum(repeats(1.5, h) for h in hashes) / len(hashes)
    assert 1.45 < mean < 1.55 and [repeats(0.3, h) for h in hashes[:50]] == [repeats(0.3, h) for h in hashes[:50]]


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


def test_document_stages_run_in_order_and_stop_at_the_first_drop():
    from raygen.data import stages

    s = stages.StageSettings(min_chars=20)
    prose = ("The pipeline reads every file of the corpus and keeps the documents that a reader would want to "
             "read, and it writes down why it dropped the others, so that the counts add up at the end. ") * 1
    prose += "Write to jane.doe@example.org with questions about the data and its sources and the license."
    page = f"<html><script>var x = 1;</script><body><p>{prose}</p></body></html>"
    out = stages.process_doc(page, "html", list(stages.DOC_STAGES), s)
    assert out["drop_reason"] == "" and "var x" not in out["text"] and "<EMAIL>" in out["text"]
    assert out["pii_email"] == 1 and out["lang"] == "en"
    short = stages.process_doc("too short", "text", list(stages.DOC_STAGES), s)
    assert short["drop_reason"] == clean.DROP_TOO_SHORT and short["lang"] == ""  # later stages skipped
    spam = stages.process_doc("buy now " * 60, "text", list(stages.DOC_STAGES), s)
    assert spam["drop_reason"].startswith("gopher_")
    french = stages.process_doc("Le chat dort sur le canapé pendant que la pluie tombe sur la ville. " * 5, "text",
                                ["normalize", "language"], stages.StageSettings(languages=("en",), min_chars=20))
    assert french["drop_reason"] == stages.DROP_LANGUAGE and french["lang"] == "fr"
    with pytest.raises(ValueError, match="unknown data stages"):
        stages.check_stages(["normalize", "magic"])
    with pytest.raises(ValueError, match="must come before"):
        stages.check_stages(["exact_dedup", "quality"])
