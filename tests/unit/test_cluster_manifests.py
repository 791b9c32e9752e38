"""The files under cluster/ are valid and say what a GPU cluster needs.

KubeRay manifests (RayCluster, RayJob): required fields, a CPU-only head, GPU limits on workers,
/dev/shm, pinned images of the Ray version this project pins, credentials only from Secrets,
entrypoints that name a real job module and a config that loads with the job's own loader.
The cluster-launcher YAML: validated by Ray's own launcher schema, plus what it must contain.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from jobs._cli import resolve_config_path
from pipeline.core.config import load_config
from pipeline.submission import config_class, is_secret_name

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
YAMLS = sorted([*CLUSTER.rglob("*.yaml"), *CLUSTER.rglob("*.yml")])
DOCKERFILE = CLUSTER / "kuberay" / "Dockerfile"
RAY_VERSION = re.search(r"^ray==(\S+)$", (REPO / "requirements/constraints.txt").read_text(), re.M).group(1)
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


KUBERAY = [(p, d) for p in YAMLS for d in _docs(p) if str(d.get("apiVersion", "")).startswith("ray.io/")]
LAUNCHER = [p for p in YAMLS if any("available_node_types" in d for d in _docs(p))]


def _ids(items: list[tuple[Path, dict]]) -> list[str]:
    return [f"{p.relative_to(CLUSTER)}:{d.get('kind')}" for p, d in items]


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def _pods(doc: dict) -> Iterator[tuple[str, dict]]:
    """(group, pod spec) of the head, every worker group and a RayJob's submitter."""
    spec = _cluster_spec(doc)
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec["workerGroupSpecs"]:
        yield group["groupName"], group["template"]["spec"]
    if doc["kind"] == "RayJob" and "submitterPodTemplate" in doc["spec"]:
        yield "submitter", doc["spec"]["submitterPodTemplate"]["spec"]


def _walk(node: Any, key: str) -> Iterator[Any]:
    """Every value stored under ``key`` anywhere in a parsed document."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from _walk(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item, key)


def test_there_is_something_to_check() -> None:
    kinds = sorted(d["kind"] for _, d in KUBERAY)
    assert kinds == ["RayCluster", "RayJob"], kinds
    assert [p.name for p in LAUNCHER] == ["aws.yaml"]


@pytest.mark.parametrize("path", YAMLS, ids=[str(p.relative_to(CLUSTER)) for p in YAMLS])
def test_every_yaml_under_cluster_parses_into_mappings(path: Path) -> None:
    docs = _docs(path)
    assert docs and all(isinstance(d, dict) for d in docs)


@pytest.mark.parametrize("path,doc", KUBERAY, ids=_ids(KUBERAY))
def test_kuberay_resource_has_a_cpu_head_and_gpu_workers(path: Path, doc: dict) -> None:
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] in ("RayCluster", "RayJob")
    assert DNS_1123.match(doc["metadata"]["name"]), doc["metadata"]["name"]
    spec = _cluster_spec(doc)
    assert spec["rayVersion"] == RAY_VERSION
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("num-cpus") == "0", "the head must not take training work"
    assert spec["workerGroupSpecs"], "no worker group"
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for name, pod in _pods(doc):
        ray_container = pod["containers"][0]
        assert ray_container["image"], name
        resources = ray_container["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[kind]), f"{name}: {kind} {resources[kind]}"
        gpus = int(resources["limits"].get("nvidia.com/gpu", 0))
        if name in ("head", "submitter"):
            assert gpus == 0, f"{name} asks for GPUs"
        else:
            assert gpus >= 1, f"worker group {name} has no nvidia.com/gpu limit"
            # Kubernetes refuses extended resources whose request differs from the limit.
            assert resources["requests"].get("nvidia.com/gpu") == resources["limits"]["nvidia.com/gpu"]
        if name != "submitter":
            shm = {v["name"] for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"}
            mounts = {m["name"] for m in ray_container["volumeMounts"] if m["mountPath"] == "/dev/shm"}
            assert mounts and mounts <= shm, f"{name}: /dev/shm is not a memory-backed volume"


_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}


def _quantity(text: str, docker: bool = False) -> int:
    """Bytes of a Kubernetes quantity ("128Gi") or a Docker size ("128g": Docker's g is GiB)."""
    m = re.fullmatch(r"(\d+)([a-zA-Z]*)", str(text).strip())
    assert m, f"not a size: {text!r}"
    unit = m.group(2).lower()
    return int(m.group(1)) * (1024 ** "bkmgt".index(unit[0]) if docker and unit else _UNITS[unit])


def _gpu_nodes() -> list[tuple[str, int, int, int]]:
    """(where, GPUs, /dev/shm bytes, object store bytes or 0 = Ray's default) of every GPU node shipped."""
    nodes = []
    for path, doc in KUBERAY:
        for group in _cluster_spec(doc)["workerGroupSpecs"]:
            pod = group["template"]["spec"]
            gpus = int(pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
            mount = next(m["name"] for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/dev/shm")
            shm = next(v["emptyDir"]["sizeLimit"] for v in pod["volumes"] if v["name"] == mount)
            store = int(group["rayStartParams"].get("object-store-memory", 0))
            nodes.append((f"{path.name}:{doc['kind']}:{group['groupName']}", gpus, _quantity(shm), store))
    config = yaml.safe_load(LAUNCHER[0].read_text())
    options = " ".join(config["docker"]["run_options"])
    shm = re.search(r"--shm-size[= ](\S+)", options).group(1)
    store = re.search(r"--object-store-memory[= ](\d+)", " ".join(config["worker_start_ray_commands"]))
    for name, node in config["available_node_types"].items():
        if node["resources"].get("GPU", 0) >= 1:
            nodes.append((f"{LAUNCHER[0].name}:{name}", int(node["resources"]["GPU"]), _quantity(shm, docker=True),
                          int(store.group(1)) if store else 0))
    return nodes


def test_dev_shm_holds_the_loaders_of_every_shipped_config_and_the_object_store() -> None:
    """Each GPU node's /dev/shm >= the object store (Ray puts it there) + what `jobs.plan --shm`
    says the loaders of every shipped config keep in flight on that node's ranks (uint8 clips)."""
    from jobs.plan import GIB, shm_rows

    nodes = _gpu_nodes()
    assert len(nodes) == 3, nodes  # RayCluster, RayJob, launcher
    for where, gpus, shm, store in nodes:
        # Unset, Ray sizes the object store to 95% of /dev/shm: nothing would be left for the loaders.
        assert store > 0, f"{where}: set the object store size (Ray's default takes 95% of /dev/shm)"
        rows = shm_rows(gpus_per_node=gpus)
        need = max(rows, key=lambda r: r["shm_gib_per_node"])
        assert need["shm_gib_per_node"] > 10, need  # the K400 configs are in the plan
        assert store + need["shm_gib_per_node"] * GIB <= shm, (
            f"{where}: /dev/shm {shm / GIB:.0f} GiB < object store {store / GIB:.0f} GiB + "
            f"{need['config']}'s loaders {need['shm_gib_per_node']:.1f} GiB on {gpus} ranks")


def test_rayjob_creates_the_same_cluster_as_raycluster() -> None:
    by_kind = {d["kind"]: d for _, d in KUBERAY}
    assert by_kind["RayJob"]["spec"]["rayClusterSpec"] == by_kind["RayCluster"]["spec"]
    assert by_kind["RayJob"]["spec"]["shutdownAfterJobFinishes"] is True


def _images() -> list[tuple[str, str]]:
    found = [(str(p.relative_to(CLUSTER)), image) for p in YAMLS for d in _docs(p) for image in _walk(d, "image")]
    for line in DOCKERFILE.read_text().splitlines():
        m = re.match(r"\s*(?:FROM|ARG RAY_IMAGE=)\s*(\S+)", line)
        if m and not m.group(1).startswith("$"):
            found.append(("kuberay/Dockerfile", m.group(1)))
    return found


def test_images_are_pinned_to_this_projects_ray_version() -> None:
    images = _images()
    assert len(images) >= 4, images
    for where, image in images:
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag and tag, f"{where}: {image} has no tag"
        assert tag != "latest" and not tag.startswith("latest-"), f"{where}: {image} is not pinned"
        assert RAY_VERSION in tag, f"{where}: {image} is not built on Ray {RAY_VERSION}"


def _commands() -> list[tuple[str, list[str]]]:
    """Every `python -m jobs.X ...` in entrypoints and container commands, as argument lists."""
    found = []
    for path in YAMLS:
        for doc in _docs(path):
            texts = [*_walk(doc, "entrypoint"), *_walk(doc, "command"), *_walk(doc, "args")]
            for text in texts:
                text = " ".join(text) if isinstance(text, list) else str(text)
                for segment in re.split(r"&&|;|\n", text):
                    words = shlex.split(segment)
                    if "-m" in words and words[words.index("-m") + 1].startswith("jobs."):
                        found.append((str(path.relative_to(CLUSTER)), words))
    return found


def test_entrypoints_run_a_real_job_with_a_config_that_loads() -> None:
    commands = _commands()
    assert commands, "no `python -m jobs.X` entrypoint under cluster/"
    for where, words in commands:
        module = words[words.index("-m") + 1]
        assert importlib.util.find_spec(module) is not None, f"{where}: no module {module}"
        assert "--config" in words, f"{where}: {module} without --config"
        config = words[words.index("--config") + 1]
        overrides = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
        job = module.removeprefix("jobs.")
        cfg = load_config(config_class(job), resolve_config_path(config, None), overrides)
        # On a cluster, data and outputs must live where every pod can reach them.
        for section, key in (("data", "shards"), ("run", "output")):
            if hasattr(cfg, section) and hasattr(getattr(cfg, section), key):
                value = getattr(getattr(cfg, section), key)
                assert value.startswith("s3://"), f"{where}: {section}.{key}={value!r} is not on S3"


def test_secrets_come_from_secret_refs_and_no_key_is_written_down() -> None:
    secret_vars = 0
    for path, doc in KUBERAY:
        for name, pod in _pods(doc):
            for var in pod["containers"][0].get("env", []):
                if is_secret_name(var["name"]):
                    secret_vars += 1
                    assert "value" not in var, f"{path.name} {name}: {var['name']} has a literal value"
                    assert var["valueFrom"]["secretKeyRef"]["name"], f"{path.name} {name}: {var['name']}"
    assert secret_vars >= 6, "expected the AWS keys and the Ray token from Secrets"
    for path in [*YAMLS, DOCKERFILE]:
        text = path.read_text()
        assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text), f"{path.name}: an AWS access key id"
        assert not re.search(r"(?i)aws_secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+]{30,}", text), path.name


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_reads_the_manifests_as_pyyaml_does(tmp_path: Path) -> None:
    """kubectl (kustomize, no cluster needed) must resolve the YAML anchors to the same objects."""
    files = sorted({p for p, _ in KUBERAY})
    for p in files:
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "kustomization.yaml").write_text("resources:\n" + "".join(f"- {p.name}\n" for p in files))
    out = subprocess.run(["kubectl", "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rendered = sorted((d for d in yaml.safe_load_all(out.stdout) if d), key=lambda d: d["kind"])
    assert rendered == sorted((d for _, d in KUBERAY), key=lambda d: d["kind"])


def test_launcher_yaml_passes_rays_own_schema() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(LAUNCHER[0].read_text())
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` does before anything else
    broken = dict(copy.deepcopy(config), head_node_typo="head")
    with pytest.raises(Exception, match="head_node_typo"):
        validate_config(prepare_config(broken))


def test_launcher_yaml_installs_the_project_and_starts_ray_behind_loopback() -> None:
    config = yaml.safe_load(LAUNCHER[0].read_text())
    assert config["provider"]["type"] == "aws" and config["provider"]["region"]
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU", 0) == 0 and not head["resources"].get("GPU")
    gpu_types = [t for n, t in types.items() if n != config["head_node_type"] and t["resources"].get("GPU", 0) >= 1]
    assert gpu_types and all(t["node_config"]["InstanceType"] for t in gpu_types)
    for node in types.values():
        assert re.match(r"^ami-[0-9a-f]{8,}$", node["node_config"]["ImageId"]), "AMI not pinned"
    setup = " ".join(config["setup_commands"])
    assert re.search(r"make setup .*TORCH_SPEC=\S+ .*TORCH_INDEX=\S+", setup), setup
    assert "." in config["file_mounts"].values()
    assert {".venv", "data", "runs", ".git"} <= set(config["rsync_exclude"])
    head_start = " ".join(config["head_start_ray_commands"])
    worker_start = " ".join(config["worker_start_ray_commands"])
    assert "ray start --head" in head_start and "--dashboard-host=127.0.0.1" in head_start
    assert "ray start --address" in worker_start
    assert "RAY_AUTH_MODE=token" in head_start and "RAY_AUTH_MODE=token" in worker_start
    assert "--shm-size" in " ".join(config["docker"]["run_options"])
