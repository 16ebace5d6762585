"""Local users of the host are not trusted: what another user on the machine sees of the server and can do to it.

The admin key (config.RESTRICTED_APIS) used to sit on tritonserver's command line, which every user
reads in /proc/<pid>/cmdline (`ps`); with it, any local user could register a stub's own /dev/shm
region and crash the server. Now the key reaches tritonserver through its environment and the
preloaded python_backend/native/fv2es_preload.c, which also keeps the stubs' shared memory private.

The attacker here is `nobody`, which root becomes with setpriv; as another user, the tests skip.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from fv2es import config
from fv2es.tritonserver import ADMIN_KEY_PLACE, EmbeddedServer, preload_library, restricted_api_args, server_env
from fv2es.watchdog import SHM_DIR, live_stubs, process_group_members

NOBODY = 65534
GRPC_KEY_HEADER = f"triton-grpc-protocol-{config.ADMIN_KEY_HEADER}"


def run_as_nobody(script: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    """`script` in this venv's Python as uid/gid 65534 with no supplementary groups, from /."""
    command = [shutil.which("setpriv"), f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--no-new-privs",
               "--", sys.executable, "-I", "-c", script, *args]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=300, cwd="/",
                          env={"PATH": "/usr/bin:/bin", "HOME": "/"})


@pytest.fixture(scope="module")
def nobody():
    """Skips unless this is root with setpriv and `nobody` can run this venv's Python with tritonclient."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to act as the unprivileged user nobody (setpriv)")
    if not shutil.which("setpriv"):
        pytest.skip("needs setpriv (util-linux) to act as the unprivileged user nobody")
    probe = run_as_nobody("import tritonclient.grpc, tritonclient.http")
    if probe.returncode != 0:
        pytest.skip(f"nobody cannot run {sys.executable} with tritonclient (is the venv or the Python it "
                    f"links readable by all users?): {probe.stderr.strip()[-300:]}")
    return run_as_nobody


def nobody_json(nobody, script: str, *args: str, stdin: str = ""):
    done = nobody(script, *args, stdin=stdin)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


# Every /proc/<pid>/cmdline and environ that the user can read, searched for the key (read from stdin).
SCAN = r"""
import json, os, sys
key = sys.stdin.read().strip().encode()
server = sys.argv[1]
found, read, server_cmdline = [], {"cmdline": 0, "environ": 0}, None
for pid in os.listdir("/proc"):
    for what in ("cmdline", "environ") if pid.isdigit() else ():
        try:
            with open(f"/proc/{pid}/{what}", "rb") as f:
                data = f.read()
        except OSError:
            continue
        read[what] += 1
        if key in data:
            found.append([pid, what])
        if pid == server and what == "cmdline":
            server_cmdline = data.decode(errors="replace").split("\0")
print(json.dumps({"found": found, "read": read, "server_cmdline": server_cmdline}))
"""


def test_a_local_user_finds_the_admin_key_on_no_command_line_and_in_no_environment(server, nobody):
    seen = nobody_json(nobody, SCAN, str(server.process.pid), stdin=server.admin_key)
    assert seen["found"] == [], f"nobody read the admin key in {seen['found']}"
    # What it read includes tritonserver's command line, with the key's place empty.
    assert seen["server_cmdline"] and seen["read"]["cmdline"] > 1, seen
    assert set(restricted_api_args("")) <= set(seen["server_cmdline"]), seen["server_cmdline"]
    # Root reads more: tritonserver's environment and its stubs' hold neither the key nor the variables
    # that carried it (fv2es_preload.so blanked the one and removed both before the stubs started).
    members = process_group_members(server.process.pid)
    assert server.process.pid in members and len(members) > 1, members
    for pid in members:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:  # a process that just ended
            continue
        assert server.admin_key.encode() not in environ, pid
        if pid != server.process.pid:  # its block keeps the names; the stubs got neither variable
            assert f"{config.ARGV_SECRET_ENV}=".encode() not in environ and config.ARGV_SECRET_AFTER_ENV.encode() not in environ, pid
    # The key's bytes are blanked in place in tritonserver's environment block.
    block = Path(f"/proc/{server.process.pid}/environ").read_bytes()
    assert f"{config.ARGV_SECRET_ENV}=".encode() + b"\0" * len(server.admin_key) in block
    assert server.admin_key not in Path(server.log_file).read_text(errors="replace")


# Registers a stub's own region (the crash of issue 22) over HTTP and gRPC, with no key and with every
# word of tritonserver's command line as the key; unregisters at once whatever got through. With the
# real key on stdin it also registers a region of its own: the control that a success would show.
ATTACK = r"""
import json, os, re, sys, urllib.error, urllib.request
import tritonclient.grpc as grpcclient
http_url, grpc_url, pid, region, header = sys.argv[1:6]
argv = open(f"/proc/{pid}/cmdline", "rb").read().decode().split("\0")
words = sorted({w for a in argv for w in (a, *re.split(r"[=:,\s]", a)) if w})
grpc = grpcclient.InferenceServerClient(grpc_url)

def http(path, body, key):
    request = urllib.request.Request(f"http://{http_url}/v2/systemsharedmemory/region/{path}", json.dumps(body).encode(),
                                     {header: key} if key is not None else {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()

def attempt(name, shm_key, key):
    status, body = http(f"{name}/register", {"key": shm_key, "offset": 0, "byte_size": 4096}, key)
    if status == 200:
        http(f"{name}/unregister", {}, key)
    out = [["http", key, status, body[:200]]]
    metadata = {f"triton-grpc-protocol-{header}": key} if key is not None else None
    try:
        grpc.register_system_shared_memory(name, shm_key, 4096, headers=metadata)
        grpc.unregister_system_shared_memory(name, headers=metadata)
        out.append(["grpc", key, "OK", ""])
    except Exception as exc:
        out.append(["grpc", key, type(exc).__name__, str(exc)[:200]])
    return out

attacks = [o for key in [None, *words] for o in attempt("attack", "/" + region, key)]
control = []
real_key = sys.stdin.read().strip()
if real_key:
    own = f"fv2es_nobody_{os.getpid()}"
    fd = os.open(f"/dev/shm/{own}", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(fd, 4096)
    try:
        control = attempt("control", "/" + own, real_key)
    finally:
        os.close(fd)
        os.unlink(f"/dev/shm/{own}")
print(json.dumps({"words": len(words), "attacks": attacks, "control": control}))
"""


def test_a_local_user_cannot_register_a_stubs_region(server, client, sample_bytes, nobody):
    region = sorted(stub.shm_region for stub in live_stubs(server.process.pid).values())[0]
    args = (server.http_url, server.grpc_url, str(server.process.pid), region, config.ADMIN_KEY_HEADER)
    seen = nobody_json(nobody, ATTACK, *args)
    assert seen["words"] > 20 and len(seen["attacks"]) == 2 * (seen["words"] + 1), seen["words"]
    for protocol, key, status, message in seen["attacks"]:
        refused = status == 403 if protocol == "http" else status == "InferenceServerException"
        assert refused and "restricted" in message, (protocol, key, status, message)
    # The same user holding the key gets through: the refusals above are the key's doing.
    control = nobody_json(nobody, ATTACK, *args, stdin=server.admin_key)["control"]
    assert [(protocol, status) for protocol, _, status, _ in control] == [("http", 200), ("grpc", "OK")], control
    # Nothing stayed registered, and the server still answers.
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    assert not grpc.get_system_shared_memory_status(headers={GRPC_KEY_HEADER: server.admin_key}, as_json=True).get("regions")
    assert server.process.poll() is None, "tritonserver died"
    assert client.analyze(sample_bytes).segments


OPEN_REGIONS = r"""
import json, sys
outcomes = {}
for path in sys.argv[1:]:
    for mode in ("r+b", "rb"):
        try:
            open(path, mode).close()
            outcomes[f"{path} {mode}"] = "opened"
        except OSError as exc:
            outcomes[f"{path} {mode}"] = type(exc).__name__
print(json.dumps(outcomes))
"""


def test_a_local_user_can_neither_write_nor_read_the_stubs_shared_memory(server, nobody):
    regions = [SHM_DIR / name for name in sorted(f.name for f in SHM_DIR.glob(f"{server.shm_prefix}*"))]
    assert regions, f"no /dev/shm region starts with {server.shm_prefix}"
    for region in regions:  # every request's inputs and outputs pass through them
        assert stat.S_IMODE(region.stat().st_mode) & 0o077 == 0, (region, oct(region.stat().st_mode))
    outcomes = nobody_json(nobody, OPEN_REGIONS, *map(str, regions))
    assert set(outcomes.values()) == {"PermissionError"}, outcomes
    # The work folder (backends, cache, a generated key, the log) is the server's user's alone.
    assert stat.S_IMODE(server.work_dir.stat().st_mode) == 0o700
    if server.admin_key_source.startswith(str(server.work_dir)):
        assert stat.S_IMODE(Path(server.admin_key_source).stat().st_mode) == 0o600


def repository_index(server, key: str | None) -> int:
    request = urllib.request.Request(f"http://{server.http_url}/v2/repository/index", b"{}", method="POST",
                                     headers={config.ADMIN_KEY_HEADER: key} if key is not None else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_admin_key_still_opens_the_admin_apis(server):
    assert repository_index(server, server.admin_key) == 200
    for wrong in (None, "", ADMIN_KEY_PLACE, server.admin_key[:-1], "x" * len(server.admin_key)):
        assert repository_index(server, wrong) == 403, wrong
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    assert grpc.get_model_repository_index(headers={GRPC_KEY_HEADER: server.admin_key}) is not None


# --- the library and the launcher, without a server --------------------------------------------

SHOW = r"""
import json, os, sys
print(json.dumps({"argv": sys.argv[1:], "cmdline": open("/proc/self/cmdline", "rb").read().decode(errors="replace"),
                  "environ": open("/proc/self/environ", "rb").read().decode(errors="replace"),
                  "env": [k for k in os.environ if k.startswith("FV2ES_ARGV_SECRET")]}))
"""


def test_the_preload_moves_the_key_from_the_environment_into_argv_only(monkeypatch):
    monkeypatch.delenv(config.ADMIN_KEY_ON_COMMAND_LINE_ENV, raising=False)
    key = "k3y-" + "0123456789abcdef" * 2
    place = f"--x=api{ADMIN_KEY_PLACE}"
    env = {**os.environ, "LD_PRELOAD": f"{preload_library()}:{config.JEMALLOC}",
           config.ARGV_SECRET_ENV: key, config.ARGV_SECRET_AFTER_ENV: ADMIN_KEY_PLACE}
    seen = json.loads(subprocess.run([sys.executable, "-c", SHOW, place, "--other=1", place + "y"], env=env,
                                     capture_output=True, text=True, check=True).stdout)
    assert seen["argv"] == [place + key, "--other=1", place + "y"]  # only arguments that end with the place
    assert key not in seen["cmdline"] and place in seen["cmdline"]
    assert key not in seen["environ"] and seen["env"] == []
    # In a process without the variables (a stub) it changes nothing.
    env = {k: v for k, v in env.items() if k not in (config.ARGV_SECRET_ENV, config.ARGV_SECRET_AFTER_ENV)}
    seen = json.loads(subprocess.run([sys.executable, "-c", SHOW, place], env=env, capture_output=True, text=True,
                                     check=True).stdout)
    assert seen["argv"] == [place]


CHMOD = r"""
import json, os, sys
modes = {}
for folder in sys.argv[1:]:
    path = os.path.join(folder, f"fv2es_preload_test_{os.getpid()}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o644)  # what boost::interprocess does to the Python backend's regions
        modes[folder] = os.fstat(fd).st_mode & 0o777
    finally:
        os.close(fd)
        os.unlink(path)
print(json.dumps(modes))
"""


def test_the_preload_keeps_shared_memory_files_to_their_owner(tmp_path, monkeypatch):
    monkeypatch.delenv(config.ADMIN_KEY_ON_COMMAND_LINE_ENV, raising=False)
    env = {**os.environ, "LD_PRELOAD": str(preload_library())}
    modes = json.loads(subprocess.run([sys.executable, "-c", CHMOD, str(SHM_DIR), str(tmp_path)], env=env,
                                      capture_output=True, text=True, check=True).stdout)
    assert modes == {str(SHM_DIR): 0o600, str(tmp_path): 0o644}  # elsewhere fchmod() does what it is asked


def test_tritonserver_refuses_to_start_with_the_keys_place_empty():
    """What happens where fv2es_preload.so is not loaded: no server, rather than an open one."""
    from fv2es.tritonserver import pytriton_dir

    done = subprocess.run([str(pytriton_dir() / "bin" / "tritonserver"), *restricted_api_args("")],
                          env=server_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "restricted-api option format" in done.stdout + done.stderr


def test_without_the_library_the_launcher_refuses_unless_told_otherwise(monkeypatch):
    monkeypatch.delenv(config.ADMIN_KEY_ON_COMMAND_LINE_ENV, raising=False)
    instance = EmbeddedServer(admin_key="k" * 24, backend_directory=Path("/nonexistent"))
    try:
        assert not any("k" * 24 in arg for arg in instance.command())
        assert instance.env()[config.ARGV_SECRET_ENV] == "k" * 24
        monkeypatch.setattr(config, "PRELOAD_LIBRARY", "lib/fv2es/not-built.so")
        with pytest.raises(RuntimeError, match="not-built.so is missing"):
            instance.command()
        monkeypatch.setenv(config.ADMIN_KEY_ON_COMMAND_LINE_ENV, "1")
        assert f"--http-restricted-api={','.join(config.RESTRICTED_APIS)}{ADMIN_KEY_PLACE}{'k' * 24}" in instance.command()
        assert config.ARGV_SECRET_ENV not in instance.env()
    finally:
        shutil.rmtree(instance.work_dir, ignore_errors=True)
