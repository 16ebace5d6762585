"""The model repository served from S3: the embedded tritonserver (2.51, nvidia-pytriton wheel) has
its S3 file system compiled in, and reads a repository from a local moto S3 server.

Triton's S3 URL names a custom endpoint as `s3://[http://|https://]host:port/bucket/path` (plain
`host:port` means http); it always uses path-style requests (`HEAD /bucket`, `GET /bucket?list-type=2`)
and the credentials in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION. Every path
component must match Triton's object pattern `[0-9a-zA-Z._-]+`, or Triton misreads the URL. Each
model folder is downloaded by itself into TRITON_AWS_MOUNT_DIRECTORY/folderXXXXXX (default /tmp)
and removed when the model is unloaded: a model sees its own folder only, not the repository.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.request
from pathlib import Path

import boto3
import pytest
from conftest import serving
from moto.server import ThreadedMotoServer

from fv2es import model_configs
from fv2es.tritonserver import REPOSITORY, EmbeddedServer, free_port
from fv2es_client import Fv2esClient

pytestmark = pytest.mark.slow  # servers of its own, from a local S3 endpoint

BUCKET = "fv2es-models"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
# A path component Triton's S3 file system can parse (core/src/filesystem/implementations/s3.h).
TRITON_S3_NAME = re.compile(r"[0-9a-zA-Z.\-_]+")


@pytest.fixture(scope="module")
def moto_endpoint():
    """A moto S3 server on 127.0.0.1 and a free port; always stopped."""
    werkzeug = logging.getLogger("werkzeug")  # moto logs every request through it
    level = werkzeug.level
    werkzeug.setLevel(logging.ERROR)
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        moto.stop()
        werkzeug.setLevel(level)


def s3_client(endpoint: str):
    return boto3.client(
        "s3", endpoint_url=f"http://{endpoint}", region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"], aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


def upload_repository(s3, local: Path, bucket: str, prefix: str) -> list[str]:
    """Uploads `local` (without __pycache__) under s3://bucket/prefix; an empty folder becomes a
    `folder/` marker object so that Triton sees it (the ensemble's version folder). Returns the keys."""
    keys = []
    for path in sorted(local.rglob("*")):
        relative = path.relative_to(local)
        if "__pycache__" in relative.parts:
            continue
        bad = [part for part in relative.parts if not TRITON_S3_NAME.fullmatch(part)]
        assert not bad, f"{relative}: Triton's S3 file system cannot parse the name {bad[0]!r}"
        key = f"{prefix}/{relative.as_posix()}"
        if path.is_file():
            s3.upload_file(str(path), bucket, key)
            keys.append(key)
        elif path.is_dir() and not any(p for p in path.iterdir() if p.name != "__pycache__"):
            s3.put_object(Bucket=bucket, Key=key + "/", Body=b"")
            keys.append(key + "/")
    return keys


def set_server_env(monkeypatch, mount: Path) -> None:
    """What the tritonserver started in this test inherits (monkeypatch undoes it after the test)."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask an instance-metadata service
    mount.mkdir()
    monkeypatch.setenv("TRITON_AWS_MOUNT_DIRECTORY", str(mount))  # downloads go here, not /tmp


ADD_ONE_CONFIG = """name: "add_one"
backend: "python"
max_batch_size: 0
input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ -1 ] } ]
instance_group [ { count: 1, kind: KIND_CPU } ]
"""

ADD_ONE_MODEL = """import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", (x + 1).astype(np.float32))]))
        return responses
"""


def test_tiny_python_model_served_from_s3(moto_endpoint, tmp_path, monkeypatch):
    """A one-model repository (Python backend) read from moto S3; the explicit `s3://http://` form."""
    s3 = s3_client(moto_endpoint)
    s3.create_bucket(Bucket="tiny")
    s3.put_object(Bucket="tiny", Key="models/add_one/config.pbtxt", Body=ADD_ONE_CONFIG.encode())
    s3.put_object(Bucket="tiny", Key="models/add_one/1/model.py", Body=ADD_ONE_MODEL.encode())
    mount = tmp_path / "mount"
    set_server_env(monkeypatch, mount)
    url = f"s3://http://{moto_endpoint}/tiny/models"
    server = EmbeddedServer(url, watch_stubs=False, log_file=tmp_path / "tritonserver.log")  # stop() removes the work folder
    try:
        server.start(timeout_s=120)
        body = json.dumps({"inputs": [{"name": "X", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]}).encode()
        request = urllib.request.Request(f"http://{server.http_url}/v2/models/add_one/infer", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            outputs = json.loads(reply.read())["outputs"]
        assert outputs[0]["name"] == "Y" and outputs[0]["data"] == [2.0, 3.0, 4.0]
        # The model folder (only it) was downloaded into the mount directory.
        downloaded = sorted(p.relative_to(mount).parts for p in mount.rglob("*") if p.is_file() and p.parent.name != "__pycache__")
        assert len({parts[0] for parts in downloaded}) == 1 and downloaded[0][0].startswith("folder")
        assert [parts[1:] for parts in downloaded] == [("1", "model.py"), ("config.pbtxt",)]
    finally:
        server.stop()
    log = Path(server.log_file).read_text(errors="replace")
    print("\n".join(line for line in log.splitlines()
                    if "model_repository_path" in line or "add_one" in line))
    assert re.search(rf"model_repository_path\[0\] +\| {re.escape(url)} ", log)
    assert "successfully loaded 'add_one'" in log
    assert not list(mount.iterdir()), "Triton removes a model's download when it unloads it"


def test_full_repository_from_s3_matches_local(moto_endpoint, tmp_path, monkeypatch, client, sample_bytes):
    """The built repository uploaded to S3 classifies the sample exactly as the local one does."""
    assert (REPOSITORY / "fusion" / "1" / "model.pt").exists(), "run `make build` first"
    local = client.analyze(sample_bytes)  # the session's server, on triton_models/ (started before the env below)

    s3 = s3_client(moto_endpoint)
    s3.create_bucket(Bucket=BUCKET)
    keys = upload_repository(s3, REPOSITORY, BUCKET, "models")
    assert "models/fv2es/config.pbtxt" in keys and "models/fusion/1/model.pt" in keys
    mount = tmp_path / "mount"
    set_server_env(monkeypatch, mount)
    with serving(EmbeddedServer(f"s3://{moto_endpoint}/{BUCKET}/models")) as server:
        # Every backend model was downloaded from S3, each folder by itself, its code with it
        # (an ensemble has nothing to download).
        models = sorted(p.name for p in REPOSITORY.iterdir() if (p / "config.pbtxt").exists()
                        and model_configs.read(p / "config.pbtxt").platform != "ensemble")
        downloaded = sorted(model_configs.read(f / "config.pbtxt").name
                            for f in mount.glob("folder*") if (f / "config.pbtxt").exists())
        assert downloaded == models
        with Fv2esClient(server.grpc_url) as remote_client:
            remote = remote_client.analyze(sample_bytes)

    assert len(remote.segments) == len(local.segments) > 0
    assert remote.labels == local.labels
    for got, want in zip(remote.segments, local.segments):
        assert got.transcript == want.transcript
        assert (got.start, got.end) == pytest.approx((want.start, want.end), abs=1e-4)
        assert (got.has_speech, got.has_face) == (want.has_speech, want.has_face)
        assert got.scores == pytest.approx(want.scores, abs=1e-4)
    assert remote.scores == pytest.approx(local.scores, abs=1e-4)
    assert remote.emotion == local.emotion
    print(f"S3 repository ({len(keys)} objects) and local repository agree on {len(local.segments)} segments; "
          f"overall {local.emotion}")
