"""The shipping files, checked without Docker or a cluster: Dockerfile, deploy/, manifests.

What can be known without building the image or applying the manifests is checked against the
real code: the image's config and the ConfigMap's pass ``load_config`` with the files laid out
as the image and the pod lay them out; the probes, ports, paths and timeouts that the
Dockerfile and the Deployment name agree with each other and with the CLI's flags.

PyYAML is not a dependency, so the manifests are read by ``read_yaml``, a reader of the YAML
subset they are written in (block mappings and sequences, ``|`` literals, plain, quoted and
flow-sequence scalars). It refuses anything else with the line number, so a manifest that
outgrows the subset fails here loudly instead of being misread.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest

from proxy.config import Config, load_config
from proxy.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
K8S = ROOT / "deploy" / "kubernetes"
EXAMPLE = ROOT / "deploy" / "config.example.toml"

# --- a reader for the YAML subset of the manifests ------------------------------------------

_KEY = re.compile(r"(?P<key>[A-Za-z0-9_./-]+):(?:[ ]+(?P<rest>.*))?$")
_INT = re.compile(r"-?[0-9]+")
_WORDS: dict[str, Any] = {"true": True, "false": False, "null": None, "~": None}


class YamlSubsetError(ValueError):
    pass


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _strip_comment(text: str) -> str:
    if text.startswith(("'", '"', "[")):
        return text  # quoted and flow values here hold no comments after them
    return re.split(r"\s+#", text, maxsplit=1)[0].rstrip()


class _Reader:
    def __init__(self, text: str) -> None:
        self.lines = text.split("\n")
        self.i = 0

    def fail(self, why: str) -> YamlSubsetError:
        return YamlSubsetError(f"line {self.i + 1}: {why}: {self.lines[self.i]!r}")

    def skip_blank(self) -> None:
        while self.i < len(self.lines) and (not self.lines[self.i].strip()
                                            or self.lines[self.i].lstrip().startswith("#")):
            self.i += 1

    def at(self, indent: int) -> str | None:
        """The next content line if it is at ``indent``; None when the block has ended."""
        self.skip_blank()
        if self.i >= len(self.lines):
            return None
        line = self.lines[self.i]
        if _indent(line) > indent:
            raise self.fail("unexpected indentation")
        return line.strip() if _indent(line) == indent else None

    def block(self) -> Any:
        self.skip_blank()
        line = self.lines[self.i]
        indent = _indent(line)
        return self.sequence(indent) if line.strip().startswith("-") else self.mapping(indent)

    def mapping(self, indent: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while (line := self.at(indent)) is not None and not line.startswith("-"):
            match = _KEY.match(line)
            if match is None:
                raise self.fail("expected key: value")
            if match["key"] in out:
                raise self.fail("duplicate key")
            self.i += 1
            out[match["key"]] = self.value(_strip_comment(match["rest"] or ""), indent)
        return out

    def sequence(self, indent: int) -> list[Any]:
        items: list[Any] = []
        while (line := self.at(indent)) is not None and (line == "-" or line.startswith("- ")):
            content = line[2:]
            if _KEY.match(content):  # "- key: value": a mapping whose keys align after "- "
                self.lines[self.i] = " " * (indent + 2) + content
                items.append(self.mapping(indent + 2))
            else:
                self.i += 1
                items.append(self.scalar(_strip_comment(content)))
        return items

    def value(self, rest: str, indent: int) -> Any:
        if rest == "|":
            return self.literal(indent)
        if rest:
            return self.scalar(rest)
        self.skip_blank()
        if self.i >= len(self.lines):
            return None
        nxt = self.lines[self.i]
        if _indent(nxt) > indent:
            return self.block()
        if _indent(nxt) == indent and nxt.strip().startswith("- "):
            return self.sequence(indent)  # "key:\n- item", a sequence not indented
        return None

    def literal(self, indent: int) -> str:
        lines: list[str] = []
        while self.i < len(self.lines) and (not self.lines[self.i].strip()
                                            or _indent(self.lines[self.i]) > indent):
            lines.append(self.lines[self.i])
            self.i += 1
        while lines and not lines[-1].strip():
            lines.pop()
        if not lines:
            return ""
        cut = min(_indent(line) for line in lines if line.strip())
        return "\n".join(line[cut:] for line in lines) + "\n"  # "clip" chomping

    def scalar(self, text: str) -> Any:
        if not text or text[0] in "&*!{>%@`":
            raise self.fail("outside the YAML subset these tests read")
        if text.startswith(('"', "[")):
            try:
                return json.loads(text)  # double-quoted and flow sequences of them are JSON
            except ValueError as exc:
                raise self.fail(f"not JSON-compatible ({exc})") from None
        if text.startswith("'"):
            if not text.endswith("'") or len(text) < 2:
                raise self.fail("unterminated single-quoted string")
            return text[1:-1].replace("''", "'")
        if text in _WORDS:
            return _WORDS[text]
        return int(text) if _INT.fullmatch(text) else text


def read_yaml(text: str) -> list[Any]:
    """The documents of a multi-document YAML text (in the subset above)."""
    docs = []
    for chunk in re.split(r"^---[ ]*$", text, flags=re.M):
        reader = _Reader(chunk)
        reader.skip_blank()
        if reader.i < len(reader.lines):
            docs.append(reader.block())
            reader.skip_blank()
            if reader.i < len(reader.lines):
                raise reader.fail("content after the document")
    return docs


def test_yaml_reader_reads_the_constructs_the_manifests_use() -> None:
    text = ('a:\n  b: 1  # note\n  c: "x: y"\n  d: [\"p\", \"q\"]\nl:\n- name: n\n  v: "0"\n'
            "- plain\nlit: |\n  one\n\n  two\nflag: true\n")
    assert read_yaml(text) == [{"a": {"b": 1, "c": "x: y", "d": ["p", "q"]},
                                "l": [{"name": "n", "v": "0"}, "plain"],
                                "lit": "one\n\ntwo\n", "flag": True}]


@pytest.mark.parametrize("text", ["a: &anchor 1\n", "a: {b: 1}\n", "a:\n  b: 1\n c: 2\n",
                                  "a: 1\na: 2\n", "a: >\n  folded\n"])
def test_yaml_reader_refuses_what_it_does_not_understand(text: str) -> None:
    with pytest.raises(YamlSubsetError):
        read_yaml(text)


# --- the manifests ------------------------------------------------------------------------


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> document, for every manifest in deploy/kubernetes."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in read_yaml(path.read_text()):
            if doc["kind"] != "Kustomization":
                out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    return manifests()


@pytest.fixture(scope="module")
def pod(k8s: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return dict(k8s[("Deployment", "clbscf-proxy")]["spec"]["template"]["spec"])


@pytest.fixture(scope="module")
def container(pod: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod["containers"]
    return dict(only)


def flag(args: list[str], name: str) -> str:
    """The value after ``name`` in an argument list (the proxy's CLI flags)."""
    assert name in args, f"{name} not in {args}"
    return args[args.index(name) + 1]


def named_port(container: dict[str, Any], name: str) -> int:
    return int(next(p["containerPort"] for p in container["ports"] if p["name"] == name))


def test_every_manifest_names_its_kind_and_api_version(
        k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    assert {kind for kind, _ in k8s} >= {"Deployment", "Service", "ConfigMap",
                                         "PodDisruptionBudget", "Secret"}
    for doc in k8s.values():
        assert doc["apiVersion"] and doc["metadata"]["labels"]["app.kubernetes.io/name"]


def test_probes_hit_healthz_on_the_admin_port_the_proxy_is_told_to_serve(
        container: dict[str, Any]) -> None:
    admin = flag(container["args"], "--admin")
    host, port = admin.rsplit(":", 1)
    # The kubelet probes the pod's IP, so a loopback admin would fail every probe.
    assert host == "0.0.0.0"
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthz"
        assert named_port(container, get["port"]) == int(port)


def test_an_admin_off_loopback_gets_its_token_from_a_secret(container: dict[str, Any]) -> None:
    env = {e["name"]: e for e in container["env"]}
    ref = env["CLBSCF_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == "clbscf-proxy-secrets" and ref.get("optional") is not True


def test_the_secret_example_holds_every_key_the_deployment_reads(
        k8s: dict[tuple[str, str], dict[str, Any]], container: dict[str, Any]) -> None:
    refs = [e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e]
    secret = k8s[("Secret", "clbscf-proxy-secrets")]
    assert {ref["key"] for ref in refs} <= set(secret["stringData"])
    assert all(ref["name"] == "clbscf-proxy-secrets" for ref in refs)


def test_grace_period_outlasts_the_prestop_pause_and_the_drain(pod: dict[str, Any],
                                                              container: dict[str, Any]) -> None:
    drain = float(flag(container["args"], "--drain-timeout"))
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > float(command[1]) + drain


def test_the_pod_runs_as_the_images_non_root_user_with_a_read_only_root(
        pod: dict[str, Any], container: dict[str, Any]) -> None:
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True
    assert f"{context['runAsUser']}:{context['runAsGroup']}" == image().user
    own = container["securityContext"]
    assert own["readOnlyRootFilesystem"] is True
    assert own["allowPrivilegeEscalation"] is False
    assert own["capabilities"]["drop"] == ["ALL"]


def test_the_writable_paths_are_empty_dirs(pod: dict[str, Any],
                                           container: dict[str, Any]) -> None:
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    for path in (flag(container["args"], "--state-dir"), "/tmp"):
        assert "emptyDir" in mounts[path], path


def test_ports_below_1024_are_opened_by_the_sysctl_not_a_capability(
        pod: dict[str, Any], container: dict[str, Any]) -> None:
    low = [p["containerPort"] for p in container["ports"] if p["containerPort"] < 1024]
    assert low, "nothing to check: no privileged port"
    sysctls = {s["name"]: s["value"] for s in pod["securityContext"]["sysctls"]}
    assert sysctls["net.ipv4.ip_unprivileged_port_start"] == "0"
    assert "add" not in container["securityContext"]["capabilities"]


def test_services_and_the_pdb_select_the_deployments_pods(
        k8s: dict[tuple[str, str], dict[str, Any]], container: dict[str, Any]) -> None:
    deployment = k8s[("Deployment", "clbscf-proxy")]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port_names = {p["name"] for p in container["ports"]}
    services = [doc for (kind, _), doc in k8s.items() if kind == "Service"]
    assert len(services) == 2
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    pdb = k8s[("PodDisruptionBudget", "clbscf-proxy")]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["maxUnavailable"] < deployment["spec"]["replicas"]


def test_kustomization_lists_manifests_that_exist_and_not_the_secret_example() -> None:
    (kustomization,) = read_yaml((K8S / "kustomization.yaml").read_text())
    assert kustomization["resources"]
    for name in kustomization["resources"]:
        assert (K8S / name).is_file(), name
    assert "secret.example.yaml" not in kustomization["resources"]


# --- the ConfigMap's rule table, as the pod sees it -------------------------------------------


def pod_root(tmp_path: Path, pod: dict[str, Any], container: dict[str, Any],
             k8s: dict[tuple[str, str], dict[str, Any]]) -> tuple[Path, str]:
    """Lay out the pod's files under ``tmp_path``: the image's COPYs, the ConfigMap and the
    TLS Secret at their mount paths. Returns (the root, the config text with the absolute
    paths moved under it)."""
    root = tmp_path / "pod"
    image().lay_out(root)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    config = k8s[("ConfigMap", volumes["rules"]["configMap"]["name"])]["data"]["config.toml"]
    tls = root / mounts["tls"].lstrip("/")
    tls.mkdir(parents=True)
    for name in ("tls.crt", "tls.key"):  # what a kubernetes.io/tls Secret holds
        (tls / name).write_text("mounted from the Secret\n")
    moved = re.sub(r'"(/(?:etc|srv|var)/)', lambda m: f'"{root}{m[1]}', config)
    path = root / flag(container["args"], "--config").lstrip("/")
    assert path.parent == root / mounts["rules"].lstrip("/"), "--config is not in the mount"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(moved)
    return path, moved


def secret_environment(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: f"value-of-{e['name']}" for e in container["env"] if "valueFrom" in e}


def test_the_configmap_rule_table_loads_with_the_pods_files_and_secrets(
        tmp_path: Path, pod: dict[str, Any], container: dict[str, Any],
        k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    path, _ = pod_root(tmp_path, pod, container, k8s)
    config = load_config(path, environ=secret_environment(container))
    assert config.scf is not None
    ports = {listener.port for listener in config.listeners}
    assert ports == {named_port(container, "http"), named_port(container, "https")}
    for fn in config.functions:
        assert fn.code.is_relative_to(tmp_path), "function code outside the image"
    # plain HTTP redirects every domain to the HTTPS listener (AutoRewrite's config form), and
    # the 301 names the port clients reach, the Service's
    public = {p["name"]: p["port"] for p in k8s[("Service", "clbscf-proxy")]["spec"]["ports"]}
    by_name = {lst.name: lst for lst in config.listeners}
    https = by_name["https"]
    assert (https.public_port or https.port) == public["https"]
    redirected = {r.domain for r in by_name["http"].rules
                  if r.rewrite is not None and r.rewrite.listener == "https" and r.rewrite.auto}
    assert redirected == {r.domain for r in https.rules}


def test_the_configmap_has_a_cvm_scf_split_and_a_remote_scf_rule(
        tmp_path: Path, pod: dict[str, Any], container: dict[str, Any],
        k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    path, _ = pod_root(tmp_path, pod, container, k8s)
    config = load_config(path, environ=secret_environment(container))
    local = {fn.key for fn in config.functions}
    rules = [rule for listener in config.listeners for rule in listener.rules]
    assert any({t.type for t in rule.targets if t.weight} == {"CVM", "SCF"} for rule in rules)
    remote = [t for rule in rules for t in rule.targets if t.type == "SCF"
              and not t.invoke_url and f"{t.namespace}/{t.function}" not in local]
    assert remote


def test_the_configmap_needs_the_secrets_credentials(
        tmp_path: Path, pod: dict[str, Any], container: dict[str, Any],
        k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    path, _ = pod_root(tmp_path, pod, container, k8s)
    env = secret_environment(container)
    del env["TENCENTCLOUD_SECRETKEY"]
    with pytest.raises(ConfigError, match="TENCENTCLOUD_SECRETKEY"):
        load_config(path, environ=env)


# --- the Dockerfile -------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"no {keyword} in stage {self.name or self.base}"
        return found[-1]


def dockerfile_instructions(text: str) -> Iterator[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are removed (Docker does)
        start = start or number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        yield Instruction(keyword.upper(), args.strip(), start)
        pending, start = "", 0


@dataclass
class Image:
    args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    @property
    def user(self) -> str:
        return self.final.last("USER").args

    def exec_form(self, keyword: str) -> list[str]:
        value = json.loads(self.final.last(keyword).args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value)
        return value

    def copies(self) -> list[tuple[list[str], str]]:
        """(sources in the build context, destination) of the final stage's plain COPYs."""
        out = []
        for copy in self.final.all("COPY"):
            words = copy.args.split()
            assert not any(w.startswith("--from") for w in words), "unexpected COPY --from"
            out.append((words[:-1], words[-1]))
        return out

    def lay_out(self, root: Path) -> None:
        """Do the final stage's COPYs from the repository into ``root``, as the build would."""
        for sources, dest in self.copies():
            for source in sources:
                src = ROOT / source
                target = root / dest.lstrip("/")
                if src.is_dir():
                    shutil.copytree(src, target, dirs_exist_ok=True)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(src, target if not dest.endswith("/") else target / src.name)


def parse_dockerfile(text: str) -> Image:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for inst in dockerfile_instructions(text):
        if inst.keyword == "ARG" and not stages:
            name, _, default = inst.args.partition("=")
            args[name] = default
        elif inst.keyword == "FROM":
            words = inst.args.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(base, name, []))
        else:
            assert stages, f"line {inst.line}: {inst.keyword} before FROM"
            stages[-1].instructions.append(inst)
    return Image(args, stages)


def image() -> Image:
    return parse_dockerfile(DOCKERFILE.read_text())


def test_dockerfile_builds_the_wheel_in_one_stage_and_installs_it_in_a_slim_one() -> None:
    build, runtime = image().stages
    assert build.name and build.base == runtime.base == "python:3.11-slim"
    build_runs = " ".join(run.args for run in build.all("RUN"))
    assert "build-essential" in build_runs and "pip wheel" in build_runs
    install = next(run.args for run in runtime.all("RUN") if "pip install" in run.args)
    assert f"from={build.name}" in install and "--no-index" in install
    assert "build-essential" not in " ".join(run.args for run in runtime.all("RUN"))


def test_dockerfile_runs_as_uid_10001_not_root() -> None:
    uid, _, gid = image().user.partition(":")
    assert uid == "10001" and gid == "10001"


def test_dockerfile_exposes_80_and_443_and_stops_with_sigterm() -> None:
    img = image()
    exposed = {word.split("/")[0] for inst in img.final.all("EXPOSE") for word in inst.args.split()}
    assert exposed == {"80", "443"}
    assert img.final.last("STOPSIGNAL").args == "SIGTERM"


def test_dockerfile_entrypoint_and_cmd_are_the_cli_with_the_image_config() -> None:
    img = image()
    assert img.exec_form("ENTRYPOINT") == ["clbscf-proxy"]
    cmd = img.exec_form("CMD")
    assert cmd == ["--config", "/etc/clbscf-proxy/config.toml", "--admin", "127.0.0.1:9901"]
    assert ["deploy/config.example.toml"] in [sources for sources, _ in img.copies()]
    assert dict((dest, src) for src, dest in img.copies())[cmd[1]] == [
        "deploy/config.example.toml"]


def test_healthcheck_asks_healthz_on_the_admin_address_of_cmd() -> None:
    img = image()
    check = img.final.last("HEALTHCHECK").args
    command = json.loads(check[check.index("CMD") + 3:].strip())
    assert command[0] == "python" and "curl" not in check  # no curl in the slim image
    admin = flag(img.exec_form("CMD"), "--admin")
    assert f"http://{admin}/healthz" in command[-1]


def test_dockerfile_copies_only_what_the_build_context_sends() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def ignored(path: str) -> bool:
        parts = Path(path).parts
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        # "**/name" matches at any depth; fnmatch's "*" also crosses "/", so "*/name" does
        return any(fnmatch(p, pat) or (pat.startswith("**/") and (
            fnmatch(p, pat[3:]) or fnmatch(p, "*/" + pat[3:])))
                   for p in prefixes for pat in patterns)

    for sources, _ in image().copies():
        for source in sources:
            assert (ROOT / source).exists(), source
            assert not ignored(source.rstrip("/")), f"{source} is in .dockerignore"
    for needed in ("pyproject.toml", "setup.py", "README.md", "proxy/cli.py",
                   "native/rules.pyx"):
        assert not ignored(needed), needed
    assert ignored(".venv") and ignored(".git") and ignored("proxy/__pycache__/x.pyc")


def test_the_image_config_loads_with_the_files_the_image_has(tmp_path: Path) -> None:
    img = image()
    img.lay_out(tmp_path)
    config = load_config(tmp_path / flag(img.exec_form("CMD"), "--config").lstrip("/"),
                         environ={})
    # the function code is the image's copy, not the repository's (the deploy/ link)
    assert all(fn.code.is_relative_to(tmp_path) for fn in config.functions)
    assert (config.functions[0].code / "index.py").is_file()
    exposed = {int(word) for inst in img.final.all("EXPOSE") for word in inst.args.split()}
    assert {listener.port for listener in config.listeners} <= exposed


# --- deploy/config.example.toml in the repository -------------------------------------------


def example_config() -> Config:
    return load_config(EXAMPLE, environ={})


def test_example_config_serves_hello_clb_on_every_host() -> None:
    config = example_config()
    (listener,) = config.listeners
    assert listener.default_domain == listener.rules[0].domain
    assert listener.rules[0].url == "/"
    source = (config.functions[0].code / "index.py").read_text()
    assert "Hello CLB" in source


def test_example_config_passes_check_config() -> None:
    done = subprocess.run([sys.executable, "-m", "proxy.cli", "--check-config", str(EXAMPLE)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert ": OK (1 listeners, 1 rules, 1 functions)" in done.stdout
