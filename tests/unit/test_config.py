import pytest

from raygen.config import load_config
from raygen.errors import ConfigError


def test_defaults_are_valid_and_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYGEN_HOME", str(tmp_path))
    cfg = load_config()
    assert cfg.train.zero_stage == 2
    assert cfg.data.output_dir == str(tmp_path / "data" / "demo")
    assert cfg.registry.root == str(tmp_path / "models")


def test_unknown_key_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  max_stepz: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert "train.max_stepz: unknown key" in str(e.value)
    assert str(f) in str(e.value)


def test_invalid_value_and_overrides(tmp_path):
    with pytest.raises(ConfigError, match=r"train.zero_stage"):
        load_config(None, ["train.zero_stage=5"])
    with pytest.raises(ConfigError, match="n_head"):
        load_config(None, ["model.n_head=3"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["nonsense"])
    cfg = load_config(None, ["train.max_steps=7", "data.paths=[a, b]"])
    assert cfg.train.max_steps == 7 and len(cfg.data.paths) == 2


def test_missing_and_non_mapping_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    f = tmp_path / "list.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(f)


def test_shipped_configs_validate():
    from pathlib import Path

    root = Path(__file__).parents[2]
    load_config(root / "pipelines" / "configs" / "demo.yaml")


def test_serve_engine_is_the_engines_own_config_checked_at_load():
    from raygen.engine.config import EngineConfig

    cfg = load_config(None, ["serve.engine.kv_cache_mib=96", "serve.engine.max_num_seqs=8"])
    assert isinstance(cfg.serve.engine, EngineConfig) and cfg.serve.engine.kv_cache_mib == 96
    with pytest.raises(ConfigError, match="serve.engine.kv_cache_mb"):
        load_config(None, ["serve.engine.kv_cache_mb=96"])  # a typo fails at load, naming the key
    with pytest.raises(ConfigError, match="block_size=0 is out of range"):
        load_config(None, ["serve.engine.block_size=0"])
    with pytest.raises(ConfigError, match="engine.model"):
        load_config(None, ["serve.engine.model=/somewhere"])  # the registry names the served model
