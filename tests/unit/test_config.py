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


def test_labelers_are_typed_by_kind_and_their_defaults_are_the_labelers_own():
    import inspect

    from raygen.data import config as dc
    from raygen.data import label

    specs = {"language": dc.LanguageLabelerSpec, "quality": dc.QualityLabelerSpec, "domain": dc.DomainLabelerSpec,
             "toxicity": dc.ToxicityLabelerSpec, "model": dc.ModelLabelerSpec, "human": dc.HumanLabelerSpec}
    assert set(specs) == set(label.KINDS)
    for kind, spec in specs.items():  # one option set: a spec's fields and defaults are its labeler's arguments
        params = inspect.signature(label.KINDS[kind]).parameters
        fields = {n: f for n, f in spec.model_fields.items() if n not in ("kind", "concurrency")}
        assert set(fields) == set(params), kind
        for name, f in fields.items():
            if params[name].default is not inspect.Parameter.empty:
                assert f.default == params[name].default, (kind, name)
    with pytest.raises(ConfigError, match=r"data.labelers.0.domain.min_rat: unknown key"):
        load_config(None, ["data.labelers=[{kind: domain, min_rat: 3}]"])  # fails at load, not in a worker
    with pytest.raises(ConfigError, match="does not match any of the expected tags"):
        load_config(None, ["data.labelers=[{kind: topic}]"])
    with pytest.raises(ConfigError, match="no stage or labeler writes a column 'domian'"):
        load_config(None, ["data.label_filter={domian: [code]}"])
    with pytest.raises(ConfigError, match="writes column 'label'"):
        load_config(None, ["data.labelers=[{kind: model, path: /m}, {kind: model, path: /n}]"])
    cfg = load_config(None, ["data.labelers=[{kind: model, path: /m, name: topic}]", "data.label_filter={topic: [a]}"])
    assert cfg.data.label_columns()["topic_score"] == "labelers[0] (model)"
