import json
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from raygen.errors import RegistryError, StorageError
from raygen.registry import Registry, local_model_dir
from raygen.storage import Location


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


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    """A fresh registry root on a local disk and in S3 (moto on 127.0.0.1): one protocol for both."""
    if request.param == "local":
        return str(tmp_path / "models")
    return f"{request.getfixturevalue('s3')}/{uuid.uuid4().hex[:8]}/models"


def test_versions_aliases_and_cards(root, hf_model):
    reg = Registry(root)
    assert reg.register("m", hf_model, None, {"metrics": {"loss": 1.0}}) == "v1"
    assert reg.register("m", hf_model, None, {}, extras={"README.md": "# m"}) == "v2"
    assert reg.versions("m") == ["v1", "v2"] and reg.aliases("m") == {"latest": "v2"}
    reg.set_alias("m", "production", "v1")
    reg.set_alias("m", "canary", "latest")  # an alias may name another alias: it stores the version
    assert reg.aliases("m") == {"canary": "v2", "latest": "v2", "production": "v1"}
    assert reg.resolve("m", "production")[0] == "v1"
    assert reg.card("m", "v1")["metrics"]["loss"] == 1.0 and reg.card("m")["version"] == "v2"
    assert (reg.resolve("m", "v2")[1] / "README.md").read_text() == "# m"


def test_plain_transformers_loads_a_local_alias_without_raygen(tmp_path, hf_model):
    reg = Registry(tmp_path / "models")
    reg.register("m", hf_model, None, {})
    code = ("import sys, transformers; m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1]); "
            "assert 'raygen' not in sys.modules; print(m.config.n_layer)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "models" / "m" / "latest")],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def test_a_registry_from_before_alias_records_keeps_its_symlink_aliases(tmp_path, hf_model):
    reg = Registry(tmp_path / "models")
    reg.register("m", hf_model, None, {})
    reg.register("m", hf_model, None, {})
    (tmp_path / "models" / "m" / "production").symlink_to("v1")  # what the old registry wrote
    assert reg.aliases("m") == {"latest": "v2", "production": "v1"}
    assert reg.resolve("m", "production")[0] == "v1"


def test_a_version_without_its_card_is_not_a_version(root, hf_model):
    """The card is written last: a registration killed mid-upload leaves no version, and the next one
    does not reuse its number (its claim stays)."""
    reg = Registry(root)
    reg.register("m", hf_model, None, {})
    reg._claim("m")  # claimed v2, then killed before any file
    (Location(root) / "m" / "v3" / "config.json").write_text("{}")  # a half-uploaded v3 without a card
    assert reg.versions("m") == ["v1"]
    with pytest.raises(RegistryError, match="no version or alias 'v3'"):
        reg.resolve("m", "v3")
    assert reg.register("m", hf_model, None, {}) == "v4"
    assert reg.versions("m") == ["v1", "v4"] and reg.aliases("m")["latest"] == "v4"


def test_concurrent_registrations_get_distinct_complete_versions(root, hf_model):
    reg = Registry(root)
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda i: Registry(root).register("m", hf_model, None, {"i": i}), range(6)))
    assert len(set(got)) == 6 and reg.versions("m") == sorted(got, key=lambda v: int(v[1:])), got
    assert sorted(reg.card("m", v)["i"] for v in got) == list(range(6))  # each version holds its own card
    assert reg.aliases("m")["latest"] == reg.versions("m")[-1]  # whatever order they finished in


def test_concurrent_promotes_leave_one_whole_alias(root, hf_model):
    reg = Registry(root)
    for _ in range(3):
        reg.register("m", hf_model, None, {})
    reg.set_alias("m", "stable", "v1")

    def promote(i: int) -> None:
        Registry(root).set_alias("m", "production", ["v2", "v3"][i % 2])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(promote, range(40)))
    assert reg.aliases("m")["production"] in ("v2", "v3")
    assert reg.aliases("m")["stable"] == "v1" and reg.aliases("m")["latest"] == "v3"  # the others untouched
    record = json.loads((Location(root) / "m" / "_aliases" / "production").read_text())
    assert set(record) == {"version", "set_at", "by"}


def test_a_remote_version_is_served_from_a_local_copy_made_once(s3, hf_model, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYGEN_CACHE", str(tmp_path / "cache"))
    root = f"{s3}/{uuid.uuid4().hex[:8]}/models"
    reg = Registry(root)
    reg.register("m", hf_model, None, {"note": "remote"})
    local = reg.local_dir("m", "latest")
    assert local.is_relative_to(tmp_path / "cache") and json.loads((local / "raygen.json").read_text())["note"] == \
        "remote"
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(local).config.n_layer == 1
    (local / "marker").write_text("still the same copy")
    assert local_model_dir(f"{root}/m/v1") == local and (local / "marker").is_file()  # cached: no re-download
    assert local_model_dir(hf_model) == hf_model  # a local directory is read in place
    with pytest.raises(StorageError, match="incomplete or missing"):
        local_model_dir(f"{root}/m/v7")


def test_clear_errors(root, hf_model, tmp_path):
    reg = Registry(root)
    with pytest.raises(RegistryError, match="no model named 'm'"):
        reg.resolve("m")
    reg.register("m", hf_model, None, {})
    with pytest.raises(RegistryError, match="no version or alias 'v9'.*versions: \\['v1'\\]"):
        reg.resolve("m", "v9")
    with pytest.raises(RegistryError, match="alias"):
        reg.set_alias("m", "v3", "v1")
    with pytest.raises(RegistryError, match="not a Hugging Face model"):
        reg.register("m", tmp_path / "nothing", None, {})
    assert json.loads((Location(root) / "m" / "v1" / "raygen.json").read_text())["version"] == "v1"
