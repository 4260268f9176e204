import json
import subprocess
import sys

import pytest

from raygen.errors import RegistryError
from raygen.registry import Registry


@pytest.fixture()
def hf_model(tmp_path):
    from raygen.train.config import ModelConfig
    from raygen.train.model import build_hf_config, model_from

    hf = build_hf_config(ModelConfig(n_layer=1, n_embd=16, n_head=2), vocab_size=64, context_length=32,
                         eos_id=0, pad_id=1)
    model = model_from(hf.to_dict())
    d = tmp_path / "export"
    model.save_pretrained(d)
    return d


def test_versions_aliases_and_plain_transformers_load(tmp_path, hf_model):
    reg = Registry(tmp_path / "models")
    assert reg.register("m", hf_model, None, {"metrics": {"loss": 1.0}}) == "v1"
    assert reg.register("m", hf_model, None, {}) == "v2"
    assert reg.versions("m") == ["v1", "v2"] and reg.aliases("m") == {"latest": "v2"}
    reg.set_alias("m", "production", "v1")
    assert reg.resolve("m", "production")[0] == "v1"
    assert reg.card("m", "v1")["metrics"]["loss"] == 1.0
    # Plain transformers on the alias path, in a process that never imports raygen.
    code = ("import sys, transformers; m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1]); "
            "assert 'raygen' not in sys.modules; print(m.config.n_layer)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "models" / "m" / "latest")],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def test_clear_errors(tmp_path, hf_model):
    reg = Registry(tmp_path / "models")
    with pytest.raises(RegistryError, match="no model named 'm'"):
        reg.resolve("m")
    reg.register("m", hf_model, None, {})
    with pytest.raises(RegistryError, match="no version or alias 'v9'.*versions: \\['v1'\\]"):
        reg.resolve("m", "v9")
    with pytest.raises(RegistryError, match="alias"):
        reg.set_alias("m", "v3", "v1")
    with pytest.raises(RegistryError, match="not a Hugging Face model"):
        reg.register("m", tmp_path, None, {})
    assert json.loads((tmp_path / "models" / "m" / "v1" / "raygen.json").read_text())["version"] == "v1"
