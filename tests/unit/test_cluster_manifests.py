"""The deploy files under cluster/: they parse; the KubeRay manifests are what cluster/render.py writes and
pass KubeRay's CRD schemas (tests/unit/kuberay_crds/); the launcher files pass Ray's cluster-launcher schema;
Ray's and raygen's versions agree across cluster/versions.env, pyproject.toml, cluster/Dockerfile, the
manifests and the launcher files; the RayService serves cluster/config.yaml's application."""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).parents[2]
CLUSTER = ROOT / "cluster"
KINDS = {"raycluster.yaml": "RayCluster", "rayjob-train.yaml": "RayJob", "rayservice.yaml": "RayService"}
LAUNCHERS = ["launcher-aws.yaml", "launcher-gcp.yaml"]


def _import_render():
    spec = importlib.util.spec_from_file_location("cluster_render", CLUSTER / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _import_render()
V = render.versions()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DOCKERFILE = (CLUSTER / "Dockerfile").read_text()


def _manifest(name: str) -> dict:
    return yaml.safe_load((CLUSTER / "kuberay" / name).read_text())


def _cluster_spec(doc: dict) -> dict:
    """The RayCluster spec inside any of the three kinds."""
    return {"RayCluster": lambda s: s, "RayJob": lambda s: s["rayClusterSpec"],
            "RayService": lambda s: s["rayClusterConfig"]}[doc["kind"]](doc["spec"])


def _containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def _group(spec: dict, name: str) -> dict:
    [group] = [g for g in spec["workerGroupSpecs"] if g["groupName"] == name]
    return group


def _serve_app(doc: dict) -> dict:
    [app] = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"]
    return app


# --- KubeRay's CRD schemas, read as the API server applies them (tests/unit/kuberay_crds/README.md) ----------

def _as_applied(node):
    """Unknown fields refused where the CRD does not preserve them (the API server prunes them); nullable."""
    if isinstance(node, list):
        return [_as_applied(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: {f: _as_applied(s) for f, s in v.items()} if k == "properties" else _as_applied(v)
           for k, v in node.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get(
            "x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


@functools.cache
def _crd_validator(kind: str) -> jsonschema.Draft7Validator:
    schema = json.loads((Path(__file__).parent / "kuberay_crds" / f"{kind.lower()}.json").read_text())
    return jsonschema.Draft7Validator(_as_applied(schema))


def _crd_errors(doc: dict) -> list[str]:
    errors = _crd_validator(doc["kind"]).iter_errors(doc)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


@functools.cache
def _launcher_validator() -> jsonschema.Draft7Validator:
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    return jsonschema.Draft7Validator(schema)


# --- tests --------------------------------------------------------------------------------------------------

def test_every_deploy_file_parses():
    files = sorted(CLUSTER.glob("*.yaml")) + sorted((CLUSTER / "kuberay").glob("*.yaml"))
    assert {f.name for f in files} >= {*KINDS, *LAUNCHERS, "config.yaml", "raygen-cluster.yaml"}
    for f in files:
        docs = list(yaml.safe_load_all(f.read_text()))
        assert docs and all(isinstance(d, dict) for d in docs), f


def test_manifests_are_what_render_writes():
    rendered = render.render()
    assert set(rendered) == {f.name for f in (CLUSTER / "kuberay").iterdir()} == set(KINDS)
    for name, text in rendered.items():
        assert (CLUSTER / "kuberay" / name).read_text() == text, "regenerate: python cluster/render.py"
    # KubeRay names a RayCluster's and a RayService's head Service alike (<name>-head-svc): names must differ.
    names = [_manifest(name)["metadata"]["name"] for name in KINDS]
    assert len(set(names)) == len(names), names


@pytest.mark.parametrize("name", KINDS)
def test_manifests_pass_kuberay_crd_schemas(name):
    doc = _manifest(name)
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", KINDS[name])
    assert _crd_errors(doc) == []


def _edit(path: str, value=None, delete: bool = False):
    """A change at a dotted path (list indices as numbers): set the value there, or delete the key."""
    def edit(doc):
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if delete:
            del node[last]
        else:
            node[last] = value
    return edit


CLUSTER_SPEC = "spec.rayClusterConfig"  # the RayService's: a whole RayCluster spec
BROKEN = {  # a change to the RayService → what an error must say
    "replicas of the wrong type": (_edit(f"{CLUSTER_SPEC}.workerGroupSpecs.1.replicas", "two"),
                                   "workerGroupSpecs.1.replicas: 'two' is not of type 'integer'"),
    "a misspelled field": (_edit(f"{CLUSTER_SPEC}.headGroupSpec.rayStartParam", {"num-cpus": "0"}),
                           "'rayStartParam' was unexpected"),
    "a rayStartParams number (they are strings)": (
        _edit(f"{CLUSTER_SPEC}.headGroupSpec.rayStartParams.num-cpus", 0), "0 is not of type 'string'"),
    "a container without a name": (
        _edit(f"{CLUSTER_SPEC}.workerGroupSpecs.0.template.spec.containers.0.name", delete=True),
        "'name' is a required property"),
    "an unknown field in the RayService's own spec": (_edit("spec.upgradeStrategy.typ", "NewCluster"),
                                                       "'typ' was unexpected"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_crd_validation_refuses_broken_manifests(case):
    edit, expected = BROKEN[case]
    doc = copy.deepcopy(_manifest("rayservice.yaml"))
    edit(doc)
    errors = _crd_errors(doc)
    assert any(expected in e for e in errors), errors


def test_rayservice_serves_cluster_config_application():
    from ray.serve.schema import ServeDeploySchema

    doc = _manifest("rayservice.yaml")
    app = _serve_app(doc)
    [local] = yaml.safe_load((CLUSTER / "config.yaml").read_text())["applications"]
    for key in ("name", "route_prefix", "import_path", "runtime_env"):
        assert app[key] == local[key], key
    # The same args, but the raygen config is the cluster's, at the image's copy of this repo's file.
    assert app["args"] == {**local["args"], "config": f"{render.HOME}/cluster/raygen-cluster.yaml"}
    assert (ROOT / "cluster" / "raygen-cluster.yaml").is_file()
    [llm] = app["deployments"]
    assert llm["name"] == "LLMServer" and llm["ray_actor_options"]["num_gpus"] == 1
    assert doc["spec"]["upgradeStrategy"] == {"type": "NewCluster"}
    ServeDeploySchema.model_validate(yaml.safe_load(doc["spec"]["serveConfigV2"]))


def test_versions_agree_everywhere():
    ray_version, raygen_version = V["RAY_VERSION"], PYPROJECT["project"]["version"]
    assert V["RAYGEN_VERSION"] == raygen_version
    [ray_req] = [Requirement(r) for r in PYPROJECT["project"]["dependencies"] if Requirement(r).name == "ray"]
    assert ray_req.specifier.contains(ray_version), f"pyproject's {ray_req} refuses cluster Ray {ray_version}"
    image = f"{V['IMAGE']}:{raygen_version}-ray{ray_version}"
    assert render.image(V) == image

    for name in KINDS:
        doc = _manifest(name)
        spec = _cluster_spec(doc)
        assert spec["rayVersion"] == ray_version, name
        assert {c["image"] for c in _containers(spec)} == {image}, name
        assert doc["metadata"]["labels"]["app.kubernetes.io/version"] == raygen_version

    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE, re.M))
    assert args == {"RAY_VERSION": ray_version, "RAY_IMAGE_SUFFIX": V["RAY_IMAGE_SUFFIX"]}
    assert re.findall(r"^FROM (\S+)$", DOCKERFILE, re.M) == ["rayproject/ray:${RAY_VERSION}-${RAY_IMAGE_SUFFIX}"]

    # Where raygen is installed, Ray is pinned to the image's version, with pyproject's extras.
    pins = {"Dockerfile": re.findall(r'"(ray\[[^"]+)"', DOCKERFILE.replace("${RAY_VERSION}", ray_version))}
    for name in LAUNCHERS:
        launcher = yaml.safe_load((CLUSTER / name).read_text())
        assert launcher["docker"]["image"] == render.base_image(V), name
        pins[name] = [r for c in launcher["setup_commands"] for r in re.findall(r'"(ray\[[^"]+)"', c)]
    for where, found in pins.items():
        assert [(r.extras, str(r.specifier)) for r in map(Requirement, found)] == [
            (ray_req.extras, f"=={ray_version}")], where


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launchers_pass_ray_schema(name):
    launcher = yaml.safe_load((CLUSTER / name).read_text())
    assert [e.message for e in _launcher_validator().iter_errors(launcher)] == []
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types
    assert all(t.get("max_workers", 0) <= launcher["max_workers"] for t in types.values())
    # The local side of each file mount exists (ray up runs from the repo root).
    assert all((ROOT / local).exists() for local in launcher["file_mounts"].values())


@pytest.mark.parametrize("broken", [{"max_workers": "8"}, {"max_worker": 8}, {"provider": {"region": "x"}}])
def test_launcher_validation_refuses_broken_files(broken):
    launcher = {**yaml.safe_load((CLUSTER / "launcher-aws.yaml").read_text()), **broken}
    assert list(_launcher_validator().iter_errors(launcher))


def test_every_ray_start_has_serve_env():
    """Serve reads these when its processes start: the image's environment (KubeRay) and the launcher's
    start commands carry them, as cluster/config.yaml's runtime_env does."""
    from raygen.cluster import SERVE_ENV

    [app] = yaml.safe_load((CLUSTER / "config.yaml").read_text())["applications"]
    assert app["runtime_env"]["env_vars"] == SERVE_ENV
    for key, value in SERVE_ENV.items():
        assert f"{key}={value}" in DOCKERFILE, key
        for name in LAUNCHERS:
            launcher = yaml.safe_load((CLUSTER / name).read_text())
            for commands in ("head_start_ray_commands", "worker_start_ray_commands"):
                assert any(f"{key}={value}" in c for c in launcher[commands]), (name, commands, key)


def test_cluster_config_loads_and_keeps_everything_in_object_storage():
    from raygen.config import load_config

    cfg = load_config(CLUSTER / "raygen-cluster.yaml")
    raw = yaml.safe_load((CLUSTER / "raygen-cluster.yaml").read_text())
    for section, key in [("data", "output_dir"), ("train", "storage_path"), ("registry", "root")]:
        assert raw[section][key].startswith("s3://raygen/"), f"{section}.{key}"
        assert getattr(getattr(cfg, section), key) == raw[section][key], f"{section}.{key}: a URI stays a URI"


def test_job_and_service_run_files_the_image_holds():
    """The RayJob's commands and the RayService's config name files the image copies from this repo."""
    workdir = re.findall(r"^WORKDIR (\S+)$", DOCKERFILE, re.M)
    assert workdir == [render.HOME]
    copied = {src for line in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", DOCKERFILE, re.M) for src in line.split()}
    allowed = {line[1:] for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    assert copied <= allowed, "the build context (.dockerignore) leaves out a file the Dockerfile copies"

    bash, flag, script = shlex.split(_manifest("rayjob-train.yaml")["spec"]["entrypoint"])
    assert (bash, flag) == ("bash", "-c")
    cd, *steps = [shlex.split(step) for step in script.split("&&")]
    assert cd == ["cd", render.HOME]
    assert [s[1] for s in steps] == ["pipelines/prepare_data.py", "pipelines/train.py"]
    for python, path, *flags in steps:
        assert python == "python" and flags == ["--config", "cluster/raygen-cluster.yaml"]
        assert (ROOT / path).is_file() and path.split("/")[0] in copied
    assert "cluster/raygen-cluster.yaml" in copied


def test_gpu_groups_follow_the_cluster_config():
    from raygen.config import load_config

    cfg = load_config(CLUSTER / "raygen-cluster.yaml")
    service = _group(_cluster_spec(_manifest("rayservice.yaml")), "gpu")
    auto = cfg.serve.autoscaling
    assert (service["minReplicas"], service["maxReplicas"]) == (auto.min_replicas, auto.max_replicas)
    job = _group(_cluster_spec(_manifest("rayjob-train.yaml")), "gpu")
    assert job["maxReplicas"] >= cfg.train.num_workers and cfg.train.use_gpu
    for group in (service, job):
        [container] = group["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_readme_names_the_versions_in_use():
    readme = (ROOT / "README.md").read_text()
    assert set(re.findall(r'"ray\[default\]==([\w.]+)"', readme)) == {V["RAY_VERSION"]}
    [kuberay] = re.findall(r"KubeRay \*\*v([\d.]+)\*\*", (Path(__file__).parent / "kuberay_crds" / "README.md").read_text())
    assert set(re.findall(r"kuberay/kuberay-operator --version ([\d.]+)", readme)) == {kuberay}
    assert f"its {kuberay} CRDs" in readme
