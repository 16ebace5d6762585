"""The Kubernetes and KServe manifests in deploy/: schema-checked with kubernetes-validate (strict: an
unknown field fails) against a named Kubernetes release, and cross-checked against the image contract
and against fv2es-serve's own command line. No cluster and no network; `kubectl kustomize` is used
when kubectl is installed.

The InferenceService is a KServe CRD, for which kubernetes-validate has no schema: its predictor's
container and pod fields are validated inside a Pod (as given, and merged over KServe's Triton runtime
the way KServe v0.20.0 merges them), its own fields against the field names of KServe v0.20.0's CRD.
"""

from __future__ import annotations

import copy
import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml
from conftest import ROOT

from fv2es import config, tritonserver

# Schemas kubernetes-validate 1.37.0 ships go from 1.28 to 1.37; 1.34 is a current release that the
# managed Kubernetes services offer. validate() falls back to an older schema set when it lacks the
# one asked for, so test_kubernetes_version_is_the_one_validated checks that it did not.
KUBERNETES_VERSION = "1.34.0"

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
ISVC_FILE = DEPLOY / "kserve" / "inferenceservice.yaml"
MANIFESTS = sorted(DEPLOY.rglob("*.yaml"))

# The image contract (docker/Dockerfile): image, launcher paths, ports, where the image keeps the repository.
IMAGE = "fv2es-triton:0.1.0"
IMAGE_REPOSITORY = "/models"
ENTRYPOINT = "/opt/nvidia/nvidia_entrypoint.sh"  # the NGC base image's, which execs its arguments
TRITONSERVER = "/opt/tritonserver/bin/tritonserver"
BACKENDS = "/opt/tritonserver/backends"
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
MIN_MEMORY_REQUEST = 8 * 2**30
MIN_SHM = 1 * 2**30
# fv2es-serve gives tritonserver this long to become ready (EmbeddedServer.start); the startup probe
# must wait at least as long, or Kubernetes kills a pod that is still loading.
LAUNCHER_START_TIMEOUT_S = 300
SECRET_NAME = "fv2es-secrets"

# KServe v0.20.0 (https://github.com/kserve/kserve/tree/v0.20.0), read for deploy/kserve/inferenceservice.yaml:
# config/runtimes/kserve-tritonserver.yaml's container, its image from config/runtimes/kustomization.yaml.
KSERVE_TRITON_RUNTIME_CONTAINER = {
    "name": "kserve-container",
    "image": "nvcr.io/nvidia/tritonserver:23.05-py3",
    "args": ["tritonserver", "--model-store=/mnt/models", "--grpc-port=9000", "--http-port=8080",
             "--allow-grpc=true", "--allow-http=true"],
    "securityContext": {"runAsUser": 1000, "allowPrivilegeEscalation": False, "privileged": False,
                        "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
    "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}},
}
KSERVE_TRITON_FORMATS = {("triton", "2"), ("tensorrt", "8"), ("tensorflow", "1"), ("tensorflow", "2"),
                         ("onnx", "1"), ("pytorch", "1")}
KSERVE_TRITON_METRICS_PORT = 8002  # the runtime's pod annotation prometheus.kserve.io/port
KSERVE_MODEL_MOUNT = "/mnt/models"  # constants.DefaultModelLocalMountPath: where storageUri lands
# Field names of config/crd/full/serving.kserve.io_inferenceservices.yaml (v1beta1) that the manifest may use.
ISVC_SPEC_FIELDS = {"predictor", "transformer", "explainer", "canary"}
ISVC_PREDICTOR_FIELDS = {
    "activeDeadlineSeconds", "affinity", "annotations", "autoScaling", "automountServiceAccountToken", "batcher",
    "canaryTrafficPercent", "containerConcurrency", "containers", "deploymentStrategy", "dnsConfig", "dnsPolicy",
    "enableServiceLinks", "hostAliases", "hostIPC", "hostNetwork", "hostPID", "hostUsers", "hostname",
    "hostnameOverride", "huggingface", "imagePullSecrets", "initContainers", "labels", "lightgbm", "logger",
    "maxReplicas", "minReplicas", "model", "name", "nodeName", "nodeSelector", "onnx", "os", "overhead", "paddle",
    "pmml", "preemptionPolicy", "priority", "priorityClassName", "pytorch", "readinessGates", "resourceClaims",
    "resources", "restartPolicy", "runtimeClassName", "scaleMetric", "scaleMetricType", "scaleTarget",
    "schedulerName", "schedulingGates", "securityContext", "serviceAccount", "serviceAccountName",
    "setHostnameAsFQDN", "shareProcessNamespace", "sklearn", "storageContainerName", "storageUris", "subdomain",
    "tensorflow", "terminationGracePeriodSeconds", "timeout", "tolerations", "topologySpreadConstraints", "triton",
    "volumes", "workerSpec", "xgboost",
}
ISVC_MODEL_FIELDS = {
    "args", "command", "confidential", "env", "envFrom", "image", "imagePullPolicy", "lifecycle", "livenessProbe",
    "modelFormat", "name", "ports", "protocolVersion", "readinessProbe", "resizePolicy", "resources", "restartPolicy",
    "restartPolicyRules", "runtime", "runtimeVersion", "securityContext", "startupProbe", "stdin", "stdinOnce",
    "storage", "storageUri", "terminationMessagePath", "terminationMessagePolicy", "tty", "volumeDevices",
    "volumeMounts", "workingDir",
}
# The model's fields that are KServe's own (the rest are Container fields).
ISVC_MODEL_ONLY_FIELDS = {"modelFormat", "runtime", "runtimeVersion", "protocolVersion", "storageUri", "storage",
                          "confidential"}
# The predictor's pod-level fields that are PodSpec fields (the rest are KServe's own).
ISVC_PREDICTOR_KSERVE_FIELDS = {
    "annotations", "autoScaling", "batcher", "canaryTrafficPercent", "containerConcurrency", "deploymentStrategy",
    "huggingface", "labels", "lightgbm", "logger", "maxReplicas", "minReplicas", "model", "name", "onnx", "paddle",
    "pmml", "pytorch", "scaleMetric", "scaleMetricType", "scaleTarget", "sklearn", "storageContainerName",
    "storageUris", "tensorflow", "timeout", "triton", "workerSpec", "xgboost",
}


# ---------------------------------------------------------------------------------------------- helpers

def load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def load_one(path: Path, kind: str) -> dict:
    docs = [d for d in load(path) if d.get("kind") == kind]
    assert len(docs) == 1, f"{path.name}: expected one {kind}, found {len(docs)}"
    return docs[0]


def validate(resource: dict) -> str:
    """Strict schema validation; returns the Kubernetes version whose schemas were used."""
    return kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def pod(spec: dict, name: str = "check") -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity as a number (bytes, cores)."""
    text = str(value)
    match = re.fullmatch(r"([0-9.]+(?:[eE][-+]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?", text)
    assert match, f"not a quantity: {value!r}"
    factors = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
               "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
    return float(match.group(1)) * factors[match.group(2)]


def container_named(pod_spec: dict, name: str) -> dict:
    found = [c for c in pod_spec["containers"] if c["name"] == name]
    assert len(found) == 1, f"no single container {name!r}"
    return found[0]


def secret_refs(resource) -> list[dict]:
    """Every secretKeyRef in a manifest."""
    found = []
    if isinstance(resource, dict):
        for key, value in resource.items():
            if key == "secretKeyRef":
                found.append(value)
            else:
                found += secret_refs(value)
    elif isinstance(resource, list):
        for value in resource:
            found += secret_refs(value)
    return found


class _Launched(Exception):
    def __init__(self, repository, kwargs):
        super().__init__("captured")
        self.repository, self.kwargs = repository, kwargs


def launcher_settings(argv: list[str], monkeypatch) -> dict:
    """What fv2es-serve's real command line (fv2es.tritonserver.main) makes of `argv`: the arguments it
    would start EmbeddedServer with. Nothing is started."""
    assert argv and argv[0] == "fv2es-serve", f"not an fv2es-serve command line: {argv}"

    def capture(repository, **kwargs):
        raise _Launched(repository, kwargs)

    monkeypatch.setattr(tritonserver, "EmbeddedServer", capture)
    monkeypatch.setattr("sys.argv", list(argv))
    monkeypatch.delenv("FV2ES_BIND_ADDRESS", raising=False)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        tritonserver.main()
    except SystemExit as exc:  # argparse refused the command line
        raise AssertionError(f"fv2es-serve rejects {argv[1:]} (exit {exc.code})") from exc
    except _Launched as launched:
        return {"repository": launched.repository, **launched.kwargs}
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    raise AssertionError("fv2es-serve returned without starting a server")


def server_argv(container: dict) -> list[str]:
    """The server's command line: command + args after the image's entrypoint (kept when there is no
    `command`, or named again), or what a `sh -c 'exec ...'` there runs."""
    command = container.get("command", [])
    assert not command or command[0] == ENTRYPOINT, "a command must keep the image's entrypoint first"
    argv = [*command[1:], *container.get("args", [])]
    if argv[:2] == ["/bin/sh", "-c"]:
        script = shlex.split(argv[2])
        assert script[0] == "exec", "the shell must exec the server, so that it gets SIGTERM"
        return script[1:]
    return argv


# ------------------------------------------------------------------------------- cross-checks (reused)

def check_server_container(pod_spec: dict, container: dict, ports: dict[str, int]) -> None:
    """The image contract for the serving container of a pod: image, ports, probes, resources,
    /dev/shm, /tmp, non-root."""
    assert container["image"].split("/")[-1] == IMAGE, container["image"]
    declared = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert declared == ports, f"container ports {declared}, expected {ports}"
    http = ports["http"]
    for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live"),
                        ("startupProbe", "/v2/health/live")):
        get = container[probe]["httpGet"]
        assert (get["path"], get["port"]) in ((path, http), (path, "http")), f"{probe}: {get}"
    startup = container["startupProbe"]
    budget = (startup.get("initialDelaySeconds", 0)
              + startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3))
    assert budget >= LAUNCHER_START_TIMEOUT_S, f"startup probe gives up after {budget} s"

    resources = container["resources"]
    assert quantity(resources.get("limits", {}).get("nvidia.com/gpu", 0)) == 1, "no GPU limit"
    assert quantity(resources["requests"].get("nvidia.com/gpu", 1)) == 1
    assert quantity(resources["requests"]["memory"]) >= MIN_MEMORY_REQUEST, "the pipeline uses about 6 GiB"
    for name, request in resources["requests"].items():
        if name in resources.get("limits", {}):
            assert quantity(request) <= quantity(resources["limits"][name]), f"{name}: request over limit"

    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    assert "/dev/shm" in mounts and "/tmp" in mounts, "/dev/shm and /tmp need their own volumes"
    shm = volumes[mounts["/dev/shm"]].get("emptyDir", {})
    assert shm.get("medium") == "Memory" and quantity(shm.get("sizeLimit", 0)) >= MIN_SHM, f"/dev/shm: {shm}"
    assert "emptyDir" in volumes[mounts["/tmp"]]

    pod_security, security = pod_spec.get("securityContext", {}), container.get("securityContext", {})
    assert security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True
    assert security.get("allowPrivilegeEscalation") is False
    assert security.get("readOnlyRootFilesystem") is not True, "the image needs a writable root filesystem"

    env = {e["name"]: e for e in container.get("env", [])}
    key = env[config.ADMIN_KEY_ENV]["valueFrom"]["secretKeyRef"]
    assert (key["name"], key["key"]) == (SECRET_NAME, "admin-key")


def check_launcher(container: dict, ports: dict[str, int], monkeypatch) -> dict:
    """fv2es-serve accepts the container's command line and listens where the container says."""
    settings = launcher_settings(server_argv(container), monkeypatch)
    assert settings["address"] == "0.0.0.0", "the server must listen on the pod's address"
    assert (settings["http_port"], settings["grpc_port"], settings["metrics_port"]) == (
        ports["http"], ports["grpc"], ports["metrics"])
    assert str(settings["tritonserver"]) == TRITONSERVER and str(settings["backend_directory"]) == BACKENDS
    return settings


def check_volume_repository(deployment: dict, pvc: dict, seed_job: dict, monkeypatch) -> None:
    """deployment.yaml: the server reads the folder of the volume that the init container (and the
    seed Job) fill from the image's repository."""
    spec = deployment["spec"]["template"]["spec"]
    server = container_named(spec, "fv2es")
    repository = check_launcher(server, PORTS, monkeypatch)["repository"]
    mounts = [m for m in server["volumeMounts"] if m["mountPath"] == str(repository)]
    assert len(mounts) == 1, f"--repository {repository} is not a volume mount of the server"
    mount = mounts[0]
    assert mount.get("readOnly") is True
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume.get("persistentVolumeClaim", {}).get("claimName") == pvc["metadata"]["name"]

    init = next(c for c in spec["initContainers"] if c["name"] == "seed-model-repository")
    job_container = seed_job["spec"]["template"]["spec"]["containers"][0]
    assert init["command"] == job_container["command"], "the init container and the seed Job must do the same"
    for holder, pod_spec in ((init, spec), (job_container, seed_job["spec"]["template"]["spec"])):
        assert holder["image"] == server["image"]
        seed_mount = next(m for m in holder["volumeMounts"])
        seed_volume = next(v for v in pod_spec["volumes"] if v["name"] == seed_mount["name"])
        assert seed_volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
        script = holder["command"][2]
        found = re.search(r"^target=(\S+)$", script, re.M)
        assert found, "the seed script names no target folder"
        target = found.group(1)
        assert target == f"{seed_mount['mountPath']}/{mount['subPath']}", (target, mount)
        assert f"cp -R {IMAGE_REPOSITORY} " in script


def check_service(service: dict, deployment: dict) -> None:
    """The Service reaches the deployment's pods on all three ports, by name and number."""
    template = deployment["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items(), "the Service selects no pod"
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container_ports = {p["name"]: p["containerPort"] for p in container_named(template["spec"], "fv2es")["ports"]}
    exposed = {}
    for port in service["spec"]["ports"]:
        target = port.get("targetPort", port["port"])
        assert not isinstance(target, str) or target in container_ports, f"no container port named {target!r}"
        exposed[port["name"]] = container_ports[target] if isinstance(target, str) else target
        assert port["port"] == exposed[port["name"]], f"{port['name']}: Service port differs from the container's"
    assert exposed == PORTS, exposed
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert grpc.get("appProtocol") == "kubernetes.io/h2c"


def kserve_merge(runtime: dict, isvc_container: dict) -> dict:
    """The predictor container KServe v0.20.0 builds (MergeRuntimeContainers): a strategic merge patch
    of the InferenceService's container over the runtime's, restricted to the fields used here (scalars
    and command replaced; env, ports, volumeMounts merged by key; resources and securityContext merged
    field by field), then args concatenated, runtime's first."""
    merged = copy.deepcopy(runtime)
    for field, value in isvc_container.items():
        if field in ("env", "ports", "volumeMounts"):
            key = {"env": "name", "ports": "containerPort", "volumeMounts": "mountPath"}[field]
            items = {item[key]: item for item in merged.get(field, [])}
            items.update({item[key]: item for item in value})
            merged[field] = list(items.values())
        elif field == "resources":
            for part in ("requests", "limits"):
                merged.setdefault("resources", {}).setdefault(part, {}).update(value.get(part, {}))
        elif field == "securityContext":
            merged.setdefault("securityContext", {}).update(value)
        elif field != "args":
            merged[field] = copy.deepcopy(value)
    merged["args"] = [*runtime.get("args", []), *isvc_container.get("args", [])]
    merged["name"] = runtime["name"]
    return merged


def isvc_parts(isvc: dict) -> tuple[dict, dict, dict]:
    """(model container fields, the predictor's PodSpec fields, the model's KServe fields)."""
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    container = {k: v for k, v in model.items() if k not in ISVC_MODEL_ONLY_FIELDS}
    pod_fields = {k: v for k, v in predictor.items() if k not in ISVC_PREDICTOR_KSERVE_FIELDS}
    return container, pod_fields, {k: v for k, v in model.items() if k in ISVC_MODEL_ONLY_FIELDS}


def isvc_pod(isvc: dict, merged: bool) -> tuple[dict, dict]:
    """A Pod with the predictor's container (as written, or merged over the runtime's as KServe does,
    with KServe's volume for a pvc:// storageUri) and the predictor's pod fields."""
    container, pod_fields, model = copy.deepcopy(isvc_parts(isvc))
    container = kserve_merge(KSERVE_TRITON_RUNTIME_CONTAINER, container) if merged else {
        "name": "kserve-container", **container}
    spec = {**pod_fields, "containers": [container]}
    uri = urlparse(model["storageUri"])
    if merged and uri.scheme == "pvc":
        spec.setdefault("volumes", []).append(
            {"name": "kserve-pvc-source", "persistentVolumeClaim": {"claimName": uri.netloc, "readOnly": True}})
        container.setdefault("volumeMounts", []).append(
            {"name": "kserve-pvc-source", "mountPath": KSERVE_MODEL_MOUNT, "subPath": uri.path.strip("/"),
             "readOnly": True})
    return pod(spec, isvc["metadata"]["name"]), container


def check_isvc(isvc: dict, pvc: dict, deployment: dict, monkeypatch) -> None:
    """The InferenceService: KServe's fields, and the container KServe will run."""
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    spec = isvc["spec"]
    assert set(spec) <= ISVC_SPEC_FIELDS, set(spec) - ISVC_SPEC_FIELDS
    predictor = spec["predictor"]
    assert set(predictor) <= ISVC_PREDICTOR_FIELDS, set(predictor) - ISVC_PREDICTOR_FIELDS
    model = predictor["model"]
    assert set(model) <= ISVC_MODEL_FIELDS, set(model) - ISVC_MODEL_FIELDS
    assert (model["modelFormat"]["name"], model["modelFormat"].get("version", "2")) in KSERVE_TRITON_FORMATS
    assert model["modelFormat"]["name"] == "triton" and model["runtime"] == "kserve-tritonserver"
    assert "runtimeVersion" not in model, "runtimeVersion would retag our image (KServe UpdateImageTag)"
    assert model.get("protocolVersion", "v2") == "v2"

    uri = urlparse(model["storageUri"])
    assert uri.scheme in ("pvc", "s3"), model["storageUri"]
    if uri.scheme == "pvc":  # the folder that deployment.yaml's init container / the seed Job fill
        subpath = next(m["subPath"] for m in container_named(deployment["spec"]["template"]["spec"], "fv2es")
                       ["volumeMounts"] if m["mountPath"] == "/mnt/models")
        assert (uri.netloc, uri.path.strip("/")) == (pvc["metadata"]["name"], subpath), model["storageUri"]
    else:
        assert uri.netloc and uri.path.strip("/"), "s3://<bucket>/<path>"

    manifest_pod, container = isvc_pod(isvc, merged=True)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert set(ports) == {"http", "grpc", "metrics"} and container["ports"][0]["name"] == "http", (
        "KServe's Service sends port 80 to the first container port")
    assert ports["metrics"] == KSERVE_TRITON_METRICS_PORT, "the runtime's Prometheus annotation names 8002"
    check_server_container(manifest_pod["spec"], container, ports)
    settings = check_launcher(container, ports, monkeypatch)
    assert str(settings["repository"]) == KSERVE_MODEL_MOUNT, "KServe puts the storageUri's models there"
    # KServe appends the runtime's args after our command: the shell must take them as $0.. and ignore them.
    assert container["command"][:3] == [ENTRYPOINT, "/bin/sh", "-c"]
    assert container["args"] == KSERVE_TRITON_RUNTIME_CONTAINER["args"], "args here would land after the runtime's"
    assert "$" not in container["command"][3], "the script must not use the runtime's appended args"


def check_example_secret(secret: dict, manifests: list[dict]) -> None:
    data = secret["stringData"]
    assert tritonserver.ADMIN_KEY_PATTERN.fullmatch(data["admin-key"]), "fv2es-serve would refuse this key"
    for key, value in data.items():
        assert key == "aws-default-region" or "EXAMPLE" in value, f"{key} does not look like an example value"
    for resource in manifests:
        for ref in secret_refs(resource):
            assert ref["name"] == secret["metadata"]["name"] and ref["key"] in data, ref


# -------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def docs() -> dict[str, dict]:
    return {
        "deployment": load_one(K8S / "deployment.yaml", "Deployment"),
        "deployment-s3": load_one(K8S / "deployment-s3.yaml", "Deployment"),
        "service": load_one(K8S / "service.yaml", "Service"),
        "pvc": load_one(K8S / "pvc.yaml", "PersistentVolumeClaim"),
        "secret": load_one(K8S / "secret.example.yaml", "Secret"),
        "seed-job": load_one(K8S / "job-seed-model-repository.yaml", "Job"),
        "isvc": load_one(ISVC_FILE, "InferenceService"),
    }


# ------------------------------------------------------------------------------------------------ tests

def test_kubernetes_version_is_the_one_validated(docs):
    minor = KUBERNETES_VERSION.rsplit(".", 1)[0]
    assert minor in {v.rsplit(".", 1)[0] for v in kubernetes_validate.utils.all_versions()}
    assert validate(docs["service"]) == minor


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_is_valid(path):
    """Every document of every manifest passes the strict schema of KUBERNETES_VERSION; KServe's
    InferenceService and kustomize's Kustomization are checked by their own tests below."""
    resources = load(path)
    assert resources, f"{path} is empty"
    for resource in resources:
        if resource["kind"] in ("InferenceService", "Kustomization"):
            continue
        assert "namespace" not in resource["metadata"], "manifests are namespace-free"
        validate(resource)


def _unknown_container_field(d):
    d["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}


def _port_as_string(d):
    d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8000"


def _unknown_spec_field(d):
    d["spec"]["replica"] = 1


def _bad_volume(d):
    d["spec"]["template"]["spec"]["volumes"][1]["emptyDir"]["medium"] = 5


@pytest.mark.parametrize("breakage", [_unknown_container_field, _port_as_string, _unknown_spec_field, _bad_volume])
def test_validator_rejects_a_broken_copy(docs, breakage):
    broken = copy.deepcopy(docs["deployment"])
    breakage(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)


@pytest.mark.parametrize("name", ["deployment", "deployment-s3"])
def test_deployment_follows_the_image_contract(docs, name, monkeypatch):
    deployment = docs[name]
    spec = deployment["spec"]["template"]["spec"]
    server = container_named(spec, "fv2es")
    check_server_container(spec, server, PORTS)
    check_launcher(server, PORTS, monkeypatch)
    assert deployment["spec"]["strategy"]["type"] == "Recreate", "one GPU: a rolling update would wait for a second"
    assert spec.get("enableServiceLinks") is False and spec.get("automountServiceAccountToken") is False
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(PORTS["metrics"])


def test_volume_deployment_reads_the_seeded_volume(docs, monkeypatch):
    check_volume_repository(docs["deployment"], docs["pvc"], docs["seed-job"], monkeypatch)


def test_s3_deployment_reads_s3_with_credentials_from_the_secret(docs, monkeypatch):
    spec = docs["deployment-s3"]["spec"]["template"]["spec"]
    server = container_named(spec, "fv2es")
    repository = check_launcher(server, PORTS, monkeypatch)["repository"]
    assert isinstance(repository, str) and tritonserver.is_remote(repository), repository
    url = urlparse(repository)
    assert url.scheme == "s3" and url.netloc and url.path.strip("/"), repository
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in server["env"]}
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        assert env[variable]["name"] == SECRET_NAME and not env[variable].get("optional"), variable
    assert not any("persistentVolumeClaim" in v for v in spec["volumes"]), "the S3 variant needs no volume"
    assert docs["deployment-s3"]["metadata"]["name"] == docs["deployment"]["metadata"]["name"], (
        "the S3 variant replaces deployment.yaml")


@pytest.mark.parametrize("name", ["deployment", "deployment-s3"])
def test_service_exposes_all_three_ports(docs, name):
    check_service(docs["service"], docs[name])


def test_example_secret_holds_example_values_for_every_reference(docs):
    assert config.ADMIN_KEY_ENV == "FV2ES_ADMIN_KEY"
    check_example_secret(docs["secret"], [docs[n] for n in ("deployment", "deployment-s3", "seed-job", "isvc")])


def test_kustomization_lists_the_volume_deployment():
    kustomization = load_one(K8S / "kustomization.yaml", "Kustomization")
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert "namespace" not in kustomization
    listed = kustomization["resources"]
    assert all((K8S / name).is_file() for name in listed), listed
    assert set(listed) == {"pvc.yaml", "deployment.yaml", "service.yaml"}
    # Every other manifest is left out on purpose (see kustomization.yaml); a new one needs a decision.
    assert {p.name for p in K8S.glob("*.yaml")} - set(listed) == {
        "kustomization.yaml", "secret.example.yaml", "deployment-s3.yaml", "job-seed-model-repository.yaml"}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) is not installed")
def test_kustomize_build_is_valid():
    built = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    resources = [d for d in yaml.safe_load_all(built.stdout) if d]
    assert sorted(r["kind"] for r in resources) == ["Deployment", "PersistentVolumeClaim", "Service"]
    for resource in resources:
        validate(resource)


def test_inferenceservice_fields_and_container(docs, monkeypatch):
    check_isvc(docs["isvc"], docs["pvc"], docs["deployment"], monkeypatch)


@pytest.mark.parametrize("merged", [False, True], ids=["as-written", "merged-over-runtime"])
def test_inferenceservice_container_is_a_valid_pod(docs, merged):
    manifest_pod, _ = isvc_pod(docs["isvc"], merged)
    validate(manifest_pod)
    broken = copy.deepcopy(docs["isvc"])
    broken["spec"]["predictor"]["model"]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(isvc_pod(broken, merged)[0])


def test_runtime_cpu_limit_would_break_an_isvc_without_its_own(docs):
    """Why the InferenceService sets limits.cpu: the runtime's limit (1) stays under a request of 2."""
    container, _, _ = isvc_parts(docs["isvc"])
    container = copy.deepcopy(container)
    del container["resources"]["limits"]["cpu"]
    merged = kserve_merge(KSERVE_TRITON_RUNTIME_CONTAINER, container)
    assert quantity(merged["resources"]["requests"]["cpu"]) > quantity(merged["resources"]["limits"]["cpu"])


# The cross-checks can fail: each of these copies breaks one thing the checks stand for.
def _spec(d):
    return d["deployment"]["spec"]["template"]["spec"]


def _server(d):
    return container_named(_spec(d), "fv2es")


def _check_server(d):
    check_server_container(_spec(d), _server(d), PORTS)


def _init_script(d):
    return _spec(d)["initContainers"][0]["command"]


BROKEN = {  # name: (change, check)
    "readiness on live": (lambda d: _server(d)["readinessProbe"]["httpGet"].update(path="/v2/health/live"),
                          _check_server),
    "probe on gRPC port": (lambda d: _server(d)["livenessProbe"]["httpGet"].update(port=8001), _check_server),
    "no GPU": (lambda d: _server(d)["resources"]["limits"].pop("nvidia.com/gpu"), _check_server),
    "small shm": (lambda d: _spec(d)["volumes"][1]["emptyDir"].update(sizeLimit="64Mi"), _check_server),
    "shm on disk": (lambda d: _spec(d)["volumes"][1]["emptyDir"].pop("medium"), _check_server),
    "short startup": (lambda d: _server(d)["startupProbe"].update(failureThreshold=10), _check_server),
    "read-only root": (lambda d: _server(d)["securityContext"].update(readOnlyRootFilesystem=True), _check_server),
    "stock image": (lambda d: _server(d).update(image="nvcr.io/nvidia/tritonserver:24.10-py3"), _check_server),
    "memory request": (lambda d: _server(d)["resources"]["requests"].update(memory="4Gi"), _check_server),
    "service without metrics": (lambda d: d["service"]["spec"]["ports"].pop(),
                                lambda d: check_service(d["service"], d["deployment"])),
    "service port renamed": (lambda d: d["service"]["spec"]["ports"][1].update(targetPort="grpcs"),
                             lambda d: check_service(d["service"], d["deployment"])),
    "service selects nothing": (lambda d: d["service"]["spec"]["selector"].update({"app.kubernetes.io/name": "x"}),
                                lambda d: check_service(d["service"], d["deployment"])),
    "secret key not in example": (lambda d: d["secret"]["stringData"].pop("aws-default-region"),
                                  lambda d: check_example_secret(d["secret"], [d["deployment-s3"]])),
    "short admin key": (lambda d: d["secret"]["stringData"].update({"admin-key": "short"}),
                        lambda d: check_example_secret(d["secret"], [])),
}
BROKEN_REPOSITORY = {
    "repository off the mount": lambda d: _server(d)["args"].__setitem__(2, "/models"),
    "seed into another folder": lambda d: [command.__setitem__(2, command[2].replace(
        "target=/mnt/pvc/model-repository", "target=/mnt/pvc/models")) for command in (
        _init_script(d), d["seed-job"]["spec"]["template"]["spec"]["containers"][0]["command"])],
    "seed Job differs": lambda d: _init_script(d).__setitem__(2, _init_script(d)[2].replace("set -eu", "set -e")),
    "unknown launcher flag": lambda d: _server(d)["args"].extend(["--model-store", "/mnt/models"]),
    "http port mismatch": lambda d: _server(d)["args"].__setitem__(6, "8080"),
    "other claim": lambda d: _spec(d)["volumes"][0]["persistentVolumeClaim"].update(claimName="models"),
    "entrypoint replaced": lambda d: _server(d).update(command=["fv2es-serve"], args=_server(d)["args"][1:]),
}
BROKEN_ISVC = {
    "runtimeVersion set": lambda i: i["spec"]["predictor"]["model"].update(runtimeVersion="24.10-py3"),
    "other format": lambda i: i["spec"]["predictor"]["model"]["modelFormat"].update(name="pytorch"),
    "other claim": lambda i: i["spec"]["predictor"]["model"].update(storageUri="pvc://models/model-repository"),
    "unknown model field": lambda i: i["spec"]["predictor"]["model"].update(images="x"),
    "args instead of command": lambda i: i["spec"]["predictor"]["model"].update(
        args=["fv2es-serve", "--repository", "/mnt/models"]),
    "repository not KServe's": lambda i: i["spec"]["predictor"]["model"]["command"].__setitem__(
        3, i["spec"]["predictor"]["model"]["command"][3].replace("/mnt/models", "/models")),
    "entrypoint dropped": lambda i: i["spec"]["predictor"]["model"]["command"].pop(0),
    "probe off the http port": lambda i: i["spec"]["predictor"]["model"]["readinessProbe"]["httpGet"].update(port=8000),
    "metrics elsewhere": lambda i: i["spec"]["predictor"]["model"]["ports"][2].update(containerPort=9090),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_cross_checks_catch_a_broken_copy(docs, case):
    change, check = BROKEN[case]
    check(copy.deepcopy(docs))  # the check passes on the manifests as they are
    broken = copy.deepcopy(docs)
    change(broken)
    with pytest.raises(AssertionError):
        check(broken)


@pytest.mark.parametrize("case", list(BROKEN_REPOSITORY))
def test_repository_checks_catch_a_broken_copy(docs, case, monkeypatch):
    broken = copy.deepcopy(docs)
    BROKEN_REPOSITORY[case](broken)
    with pytest.raises(AssertionError):
        check_volume_repository(broken["deployment"], broken["pvc"], broken["seed-job"], monkeypatch)


@pytest.mark.parametrize("case", list(BROKEN_ISVC))
def test_inferenceservice_checks_catch_a_broken_copy(docs, case, monkeypatch):
    broken = copy.deepcopy(docs["isvc"])
    BROKEN_ISVC[case](broken)
    with pytest.raises(AssertionError):
        check_isvc(broken, docs["pvc"], docs["deployment"], monkeypatch)
