import pytest

from raygen.errors import RequestError, as_request_error
from raygen.serve.protocol import parse_request
from raygen.train.schedule import lr_factor


def test_valid_request_defaults():
    r = parse_request({"prompt": "hi", "stop": "\n"})
    assert r.stop == ["\n"] and r.temperature == 1.0 and not r.stream
    assert parse_request({"prompt": ["one"]}).prompt == "one"


@pytest.mark.parametrize("body,param", [
    ({}, "prompt"), ({"prompt": ""}, "prompt"), ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "temperature": 3}, "temperature"), ({"prompt": "x", "stop": ["a"] * 5}, "stop"),
    ({"prompt": ["a", "b"]}, "prompt"), ({"prompt": "x", "echo": True}, "echo"),
    ({"prompt": "x", "logprobs": 50}, "logprobs"), ({"prompt": "x", "n": 0}, "n"),
])
def test_invalid_requests_name_the_field(body, param):
    with pytest.raises(RequestError) as e:
        parse_request(body)
    assert e.value.status == 400 and e.value.param == param and param in e.value.message


def test_non_object_body_and_pickling():
    import pickle

    with pytest.raises(RequestError):
        parse_request([1, 2])
    err = pickle.loads(pickle.dumps(RequestError("nope", status=404, param="model")))
    assert (err.status, err.param, err.message) == (404, "model", "nope")
    assert as_request_error(ValueError()) is None


def test_lr_schedule_warmup_then_cosine_to_floor():
    assert lr_factor(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(55, 10, 100, 0.1) == pytest.approx(0.55)
