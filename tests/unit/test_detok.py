import pytest

from raygen.engine.detok import IncrementalDetokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from raygen.data.features import train_tokenizer
    from raygen.data.sources import builtin_documents

    texts = [d["text"] for d in builtin_documents()[:10]] + ["héllo wörld ✓ 日本語 🙂"] * 3
    return train_tokenizer(iter(texts), 400, str(tmp_path_factory.mktemp("tok")))


def _stream(tok, text, stop=(), chunk=1):
    ids = tok(text)["input_ids"]
    d = IncrementalDetokenizer(tok, list(stop))
    out = []
    for i in range(0, len(ids), chunk):
        out.append(d.add(ids[i:i + chunk]))
        assert "\ufffd" not in out[-1]
        if d.stopped:
            break
    out.append(d.flush())
    return "".join(out), d.stopped


def test_multibyte_characters_split_across_tokens(tok):
    text = "byte soup: 日本語 🙂 ✓ ü"
    ids = tok(text)["input_ids"]
    assert len(ids) > len(text.split())  # multi-byte chars do span several tokens here
    assert _stream(tok, text)[0] == text


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_stop_string_ends_output_exactly_before_it(tok, chunk):
    text = "for x in range(3): print(x) END trailing"
    out, stopped = _stream(tok, text, stop=["END"], chunk=chunk)
    assert stopped and out == "for x in range(3): print(x) "


def test_partial_stop_prefix_is_released_when_not_a_stop(tok):
    out, stopped = _stream(tok, "an EN dash and ENDless", stop=["END!"])
    assert not stopped and out == "an EN dash and ENDless"
