"""deploy/kubernetes/store: the fleet on one etcd, checked without a cluster.

The overlay's files are read with test_deploy's YAML-subset reader; its JSON patch (RFC 6902)
is applied to the base Deployment here, as kustomize would, and the result is checked against
the real code: the --store URL parses and names every etcd member by the headless Service's
per-pod names on the client port, the command line parses, readiness stays on /healthz, every
mount has its volume, the seed Job pushes the ConfigMap's table (mounted where its argument
says) with --if-empty to the same URL, and the etcd members' flags describe one cluster.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from proxy.cli import build_parser
from proxy.store.command import build_parser as store_parser
from proxy.store.etcd import parse_store_url
from tests.unit.test_deploy import K8S, flag, manifests, named_port, read_yaml

STORE = K8S / "store"


def _docs(name: str) -> list[Any]:
    return read_yaml((STORE / name).read_text())


def _pointer(path: str) -> list[str]:
    assert path.startswith("/")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def json_patch(document: Any, operations: list[dict[str, Any]]) -> Any:
    """RFC 6902's add, remove, replace and test: what the overlay uses."""
    out = copy.deepcopy(document)
    for op in operations:
        *parents, last = _pointer(op["path"])
        node = out
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        kind = op["op"]
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if kind == "test":
                assert node[index] == op["value"], op
            elif kind == "remove":
                del node[index]
            elif kind == "replace":
                node[index] = op["value"]
            elif kind == "add":
                node.insert(index, op["value"])
            else:
                raise AssertionError(f"unsupported op {kind}")
        else:
            if kind == "test":
                assert node[last] == op["value"], op
            elif kind == "remove":
                del node[last]
            elif kind in ("replace", "add"):
                assert kind == "add" or last in node, op
                node[last] = op["value"]
            else:
                raise AssertionError(f"unsupported op {kind}")
    return out


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    (doc,) = _docs("kustomization.yaml")
    return dict(doc)


@pytest.fixture(scope="module")
def etcd() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in _docs("etcd.yaml")}


@pytest.fixture(scope="module")
def deployment(kustomization: dict[str, Any]) -> dict[str, Any]:
    base = manifests()[("Deployment", "clbscf-proxy")]
    (patch,) = kustomization["patches"]
    assert patch["target"] == {"kind": "Deployment", "name": base["metadata"]["name"]}
    (operations,) = _docs(patch["path"])
    return dict(json_patch(base, operations))


@pytest.fixture(scope="module")
def seed() -> dict[str, Any]:
    (job,) = _docs("seed-job.yaml")
    assert job["kind"] == "Job"
    return dict(job)


def _members(etcd: dict[str, dict[str, Any]]) -> list[str]:
    """clbscf-etcd-N.clbscf-etcd:CLIENT for every member of the StatefulSet."""
    sts, service = etcd["StatefulSet"], etcd["Service"]
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    client = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "client")
    return [f"{sts['metadata']['name']}-{i}.{service['metadata']['name']}:{client}"
            for i in range(sts["spec"]["replicas"])]


def test_the_kustomization_builds_on_the_base_and_lists_files_that_exist(
        kustomization: dict[str, Any]) -> None:
    resources = kustomization["resources"]
    assert "../" in resources
    for name in resources:
        assert (STORE / name).exists(), name
    (base,) = read_yaml((K8S / "kustomization.yaml").read_text())
    assert kustomization["images"] == base["images"]  # the seed Job runs the same image


def test_the_deployment_reads_the_table_from_every_etcd_member(
        deployment: dict[str, Any], etcd: dict[str, dict[str, Any]]) -> None:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert "--config" not in args
    url = parse_store_url(flag(args, "--store"))
    assert list(url.endpoints) == _members(etcd)
    parsed = build_parser().parse_args(args)  # the real command line takes them
    assert parsed.store and parsed.config is None and parsed.workers == 2
    # readiness and liveness still ask /healthz on the admin port --admin binds
    admin_port = int(flag(args, "--admin").rsplit(":", 1)[1])
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"
        assert named_port(container, container[probe]["httpGet"]["port"]) == admin_port


def test_the_configmap_is_no_longer_mounted_and_every_mount_has_its_volume(
        deployment: dict[str, Any]) -> None:
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"] for v in pod["volumes"]}
    assert "rules" not in volumes
    assert {m["name"] for m in container["volumeMounts"]} <= volumes
    assert not any("configMap" in v for v in pod["volumes"])


def test_etcd_credentials_come_from_the_secret_and_are_optional(
        deployment: dict[str, Any], seed: dict[str, Any]) -> None:
    secret = manifests()[("Secret", "clbscf-proxy-secrets")]["stringData"]
    for pod in (deployment["spec"]["template"]["spec"], seed["spec"]["template"]["spec"]):
        (container,) = pod["containers"]
        env = {e["name"]: e for e in container["env"]}
        for name in ("CLBSCF_ETCD_USER", "CLBSCF_ETCD_PASSWORD"):
            ref = env[name]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "clbscf-proxy-secrets" and ref["optional"] is True
        refs = [e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e]
        assert {ref["key"] for ref in refs} <= set(secret)


def test_the_seed_job_pushes_the_configmap_to_the_same_store_if_empty(
        seed: dict[str, Any], deployment: dict[str, Any]) -> None:
    pod = seed["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[:3] == ["store", "push", "--if-empty"]
    parsed = store_parser().parse_args(args[1:])
    assert parsed.command == "push" and parsed.if_empty
    (proxy,) = deployment["spec"]["template"]["spec"]["containers"]
    assert parsed.store == flag(proxy["args"], "--store")
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert set(mounts) <= set(volumes)
    rules = volumes["rules"]["configMap"]["name"]
    table = manifests()[("ConfigMap", rules)]["data"]
    assert parsed.file == Path(mounts["rules"]["mountPath"]) / next(iter(table))
    # what the table needs to validate: the TLS Secret where it names it, the SCF keys
    text = next(iter(table.values()))
    for path in re.findall(r'"(/etc/clbscf-proxy/tls/[^"]+)"', text):
        assert Path(path).parent == Path(mounts["tls"]["mountPath"])
    base = {e["name"] for e in proxy["env"] if e["name"].startswith("TENCENTCLOUD_SECRET")}
    assert base <= {e["name"] for e in container["env"]}
    assert pod["restartPolicy"] == "OnFailure" and seed["spec"]["backoffLimit"] > 0


def test_the_etcd_members_form_one_cluster(etcd: dict[str, dict[str, Any]]) -> None:
    sts, service = etcd["StatefulSet"], etcd["Service"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    args = dict(arg[2:].split("=", 1) for arg in container["args"])
    env = {e["name"]: e for e in container["env"]}
    assert args["name"] == "$(POD_NAME)"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    name, headless = sts["metadata"]["name"], service["metadata"]["name"]
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == ports
    members = [f"{name}-{i}" for i in range(sts["spec"]["replicas"])]
    assert args["initial-cluster"] == ",".join(
        f"{m}=http://{m}.{headless}:{ports['peer']}" for m in members)
    assert args["initial-advertise-peer-urls"] == f"http://$(POD_NAME).{headless}:{ports['peer']}"
    assert args["advertise-client-urls"] == f"http://$(POD_NAME).{headless}:{ports['client']}"
    assert args["listen-client-urls"].endswith(f":{ports['client']}")
    mount = container["volumeMounts"][0]
    assert args["data-dir"].startswith(mount["mountPath"] + "/")
    assert mount["name"] == sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "client"}
    pdb = etcd["PodDisruptionBudget"]["spec"]
    assert pdb["maxUnavailable"] <= (sts["spec"]["replicas"] - 1) // 2  # a quorum stays
    assert pdb["selector"]["matchLabels"].items() <= \
        sts["spec"]["template"]["metadata"]["labels"].items()


def test_json_patch_refuses_a_test_that_does_not_hold() -> None:
    with pytest.raises(AssertionError):
        json_patch({"a": [{"name": "x"}]}, [{"op": "test", "path": "/a/0/name", "value": "y"}])
    assert json_patch({"a": [1, 2]}, [{"op": "remove", "path": "/a/0"},
                                      {"op": "add", "path": "/a/-", "value": 3}]) == {"a": [2, 3]}
