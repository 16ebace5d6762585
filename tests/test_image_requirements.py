"""The Docker image (docker/Dockerfile) installs what the served code imports, at the versions the
test suite runs on, and installs nothing when a container starts.

Fast and offline: these tests read docker/requirements.txt, requirements.txt, docker/Dockerfile,
docker-compose.yml and the sources; they build nothing. The checks are plain functions, and the last
tests feed them broken inputs to show that they fail when they should.
"""

from __future__ import annotations

import ast
import importlib.metadata
import io
import re
import shlex
import sys
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
TOP_REQUIREMENTS = ROOT / "requirements.txt"
IMAGE_REQUIREMENTS = ROOT / "docker" / "requirements.txt"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"

BASE_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
CUDA_LABEL = "cu126"  # the CUDA of that image, 12.6: the torch builds must match it
CUDA_BUILDS = ("torch", "torchaudio", "torchvision")  # installed by the Dockerfile from PyTorch's index
# Pinned in requirements.txt for development and tests only, kept out of the image: the embedded
# tritonserver (the image has its own), the test runner and the client's plots, and the tools of the
# deployment tests (a local S3 endpoint, the Kubernetes schemas), the web page (fv2es-web runs next
# to the server, not in its image) with its browser test, this test's Dockerfile parser, and the
# stream benchmark's word error rate. A new pin in requirements.txt goes into docker/requirements.txt
# or here (test_every_pin_of_requirements_txt_is_...).
NOT_IN_IMAGE = ("nvidia-pytriton", "pytest", "matplotlib", "moto", "boto3", "kubernetes-validate",
                "fastapi", "starlette", "uvicorn", "python-multipart", "opentelemetry-api", "playwright",
                "dockerfile-parse", "jiwer")

# The code that runs in the image: the models' package, the client (fv2es-probe is the image's health
# check) and the models' entry points.
RUNTIME_SOURCES = (ROOT / "python_backend" / "fv2es", ROOT / "client" / "fv2es_client")
OWN_PACKAGES = {"fv2es", "fv2es_client", "fv2es_build"}
# Not from pip: Triton's Python backend puts this module on the stubs' sys.path.
PROVIDED_BY_TRITON = {"triton_python_backend_utils"}
# Imported inside a function only, for something the image does without; they must stay lazy.
ABSENT_IN_IMAGE = {
    # fv2es.tritonserver.pytriton_dir(): the nvidia-pytriton wheel's embedded tritonserver and stubs,
    # the default outside the image; the image names its own binary and backends (--tritonserver,
    # --backend-directory), so fv2es-serve never calls it there.
    "pytriton": "nvidia-pytriton",
    # fv2es_client.output.plot_timelines(): `fv2es-client --plot` only.
    "matplotlib": "matplotlib",
}


# ---- reading the files ---------------------------------------------------------------------------


def read_pins(path: Path) -> dict[str, str | None]:
    """Canonical name -> the version pinned with ==, or None for a requirement that is not pinned."""
    pins: dict[str, str | None] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        pinned = len(specifiers) == 1 and specifiers[0].operator == "=="
        pins[canonicalize_name(requirement.name)] = specifiers[0].version if pinned else None
    return pins


def parsed(dockerfile_text: str) -> DockerfileParser:
    return DockerfileParser(fileobj=io.BytesIO(dockerfile_text.encode()))


def instructions(dockerfile_text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    return [(step["instruction"], step["value"]) for step in parsed(dockerfile_text).structure
            if step["instruction"] != "COMMENT"]


def expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)


def stages(steps: list[tuple[str, str]]) -> list[tuple[str, str | None]]:
    """(image or earlier stage, alias) of each FROM."""
    result = []
    for keyword, arguments in steps:
        if keyword == "FROM":
            tokens = [t for t in arguments.split() if not t.startswith("--")]
            alias = tokens[2] if len(tokens) >= 3 and tokens[1].upper() == "AS" else None
            result.append((tokens[0], alias))
    return result


def base_image_problems(steps: list[tuple[str, str]]) -> list[str]:
    """Every stage starts from BASE_IMAGE or an earlier stage, and so does the image (the last)."""
    problems, roots = [], {}
    for image, alias in stages(steps):
        root = roots.get(image, image)
        if root != BASE_IMAGE:
            problems.append(f"FROM {image} does not come from {BASE_IMAGE}")
        if alias:
            roots[alias] = root
    if not stages(steps):
        problems.append("no FROM")
    return problems


def copies(steps: list[tuple[str, str]]) -> dict[str, str]:
    """Path in the image -> path in the build context, for COPY/ADD from the context."""
    mapping = {}
    for keyword, arguments in steps:
        if keyword not in ("COPY", "ADD"):
            continue
        tokens = shlex.split(arguments)
        if any(t.startswith("--from") for t in tokens):
            continue
        paths = [t for t in tokens if not t.startswith("--")]
        if len(paths) != 2:
            continue
        source, target = paths
        if target.endswith("/") and not source.endswith("/"):
            target += Path(source).name
        mapping[target.rstrip("/")] = source.rstrip("/")
    return mapping


# pip options that take a value (the value is not a requirement).
PIP_VALUE_OPTIONS = {
    "-r", "--requirement", "-c", "--constraint", "-i", "--index-url", "--extra-index-url", "-f",
    "--find-links", "-t", "--target", "--prefix", "--root", "--platform", "--python-version",
    "--implementation", "--abi", "-C", "--config-settings", "--progress-bar", "--trusted-host",
    "--cache-dir", "--log", "--src", "--only-binary", "--no-binary", "--upgrade-strategy",
}


def pip_installs(dockerfile_text: str) -> list[dict]:
    """Each `pip install` in a RUN: its options, requirements (incl. -r files from the context) and local paths."""
    parser, mapping = parsed(dockerfile_text), copies(instructions(dockerfile_text))
    found = []
    for step, context in zip(parser.structure, parser.context_structure):
        if step["instruction"] != "RUN":
            continue
        values = {**context.args, **context.envs}  # the ARG and ENV values at this step
        for command in re.split(r"&&|\|\||;|\|", expand(step["value"], values)):
            try:
                tokens = shlex.split(command)
            except ValueError:
                continue
            for i in range(len(tokens) - 1):
                if Path(tokens[i]).name in ("pip", "pip3") and tokens[i + 1] == "install":
                    found.append(parse_pip_install(tokens[i + 2 :], mapping))
                    break
    return found


def parse_pip_install(arguments: list[str], mapping: dict[str, str]) -> dict:
    install = {"options": [], "requirements": [], "requirement_files": [], "constraints": [], "local": []}
    i = 0
    while i < len(arguments):
        token = arguments[i]
        if token.startswith("-"):
            name, _, inline = token.partition("=")
            value = inline or (arguments[i + 1] if name in PIP_VALUE_OPTIONS and i + 1 < len(arguments) else None)
            install["options"].append((name, value))
            if name in ("-r", "--requirement"):
                install["requirement_files"].append(mapping.get(value, value))
            elif name in ("-c", "--constraint"):
                install["constraints"].append(value)
            i += 1 if inline or name not in PIP_VALUE_OPTIONS else 2
            continue
        if token.startswith(("/", ".")):
            install["local"].append(token.rstrip("/") or "/")
        else:
            install["requirements"].append(Requirement(token))
        i += 1
    install["no_deps"] = ("--no-deps", None) in install["options"]
    return install


def installed_by_dockerfile(dockerfile_text: str) -> dict[str, str | None]:
    """Canonical name -> pinned version (None if not pinned) of what the Dockerfile's pip installs,
    requirement files and the project (a local folder holding the copied pyproject.toml) included."""
    mapping = copies(instructions(dockerfile_text))
    names: dict[str, str | None] = {}
    for install in pip_installs(dockerfile_text):
        for requirement in install["requirements"]:
            specifiers = list(requirement.specifier)
            pinned = len(specifiers) == 1 and specifiers[0].operator == "=="
            names[canonicalize_name(requirement.name)] = specifiers[0].version if pinned else None
        for file in install["requirement_files"]:
            names.update(read_pins(ROOT / file))
        for folder in install["local"]:
            if mapping.get(f"{folder}/pyproject.toml") == "pyproject.toml" or folder == ".":
                names["fv2es"] = None
    return names


def runtime_files() -> list[Path]:
    files = [p for source in RUNTIME_SOURCES for p in sorted(source.rglob("*.py"))]
    return files + sorted((ROOT / "triton_models").glob("*/*/model.py"))


def imported_modules(files: list[Path]) -> dict[str, list[tuple[Path, int, bool]]]:
    """Top-level module name -> (file, line, at module level?) of each absolute import."""
    found: dict[str, list[tuple[Path, int, bool]]] = {}

    def visit(node: ast.AST, in_function: bool, path: Path) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.setdefault(alias.name.split(".")[0], []).append((path, child.lineno, not in_function))
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.setdefault(child.module.split(".")[0], []).append((path, child.lineno, not in_function))
            visit(child, nested, path)

    for path in files:
        visit(ast.parse(path.read_text(), filename=str(path)), False, path)
    return found


def third_party(modules: dict[str, list]) -> dict[str, list]:
    skip = set(sys.stdlib_module_names) | OWN_PACKAGES | PROVIDED_BY_TRITON
    return {name: where for name, where in modules.items() if name not in skip}


def coverage_problems(modules: dict[str, list], installed: set[str]) -> list[str]:
    """Third-party modules whose distribution the image does not install (ABSENT_IN_IMAGE aside)."""
    distributions = importlib.metadata.packages_distributions()
    problems = []
    for module, where in sorted(third_party(modules).items()):
        if module in ABSENT_IN_IMAGE:
            continue
        first = f"{where[0][0].relative_to(ROOT)}:{where[0][1]}"
        owners = {canonicalize_name(d) for d in distributions.get(module, [])}
        if not owners:
            problems.append(f"{module} ({first}): no installed distribution provides it here, cannot check")
        elif not owners & installed:
            problems.append(f"{module} ({first}): {', '.join(sorted(owners))} is not installed by the image")
    return problems


def laziness_problems(modules: dict[str, list]) -> list[str]:
    """ABSENT_IN_IMAGE modules imported at module level (an import error when the module loads)."""
    return [
        f"{module} imported at module level in {path.relative_to(ROOT)}:{line}"
        for module in ABSENT_IN_IMAGE
        for path, line, top_level in modules.get(module, [])
        if top_level
    ]


def pin_problems(image: dict[str, str | None], top: dict[str, str | None]) -> list[str]:
    problems = []
    for name, version in sorted(image.items()):
        if version is None:
            problems.append(f"{name} is not pinned with == in docker/requirements.txt")
        elif name not in top:
            problems.append(f"{name}=={version} is not in requirements.txt")
        elif top[name] != version:
            problems.append(f"{name}=={version}, but requirements.txt pins {name}=={top[name]}")
    return problems


def start_problems(steps: list[tuple[str, str]]) -> list[str]:
    """Installing in CMD, ENTRYPOINT or HEALTHCHECK would happen at every container start."""
    installer = re.compile(r"\b(pip3?|apt-get|apt|conda|uv)\b.*\binstall\b|\bpip3?\b")
    return [f"{keyword} {arguments}" for keyword, arguments in steps
            if keyword in ("CMD", "ENTRYPOINT", "HEALTHCHECK") and installer.search(arguments)]


# ---- the tests -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


@pytest.fixture(scope="module")
def steps(dockerfile) -> list[tuple[str, str]]:
    return instructions(dockerfile)


@pytest.fixture(scope="module")
def image_pins() -> dict[str, str | None]:
    return read_pins(IMAGE_REQUIREMENTS)


@pytest.fixture(scope="module")
def top_pins() -> dict[str, str | None]:
    return read_pins(TOP_REQUIREMENTS)


@pytest.fixture(scope="module")
def installed(dockerfile) -> dict[str, str | None]:
    return installed_by_dockerfile(dockerfile)


def test_every_image_pin_is_the_pin_of_requirements_txt(image_pins, top_pins):
    assert image_pins, "docker/requirements.txt pins nothing"
    assert pin_problems(image_pins, top_pins) == []


def test_development_only_packages_stay_out_of_the_image(image_pins, installed):
    for name in NOT_IN_IMAGE:
        assert name not in image_pins, f"{name} is in docker/requirements.txt"
        assert name not in installed, f"the Dockerfile installs {name}"


def test_every_pin_of_requirements_txt_is_in_the_image_or_left_out_on_purpose(top_pins, installed):
    missing = sorted(set(top_pins) - set(installed) - set(NOT_IN_IMAGE))
    assert missing == [], f"pinned in requirements.txt, not installed by docker/Dockerfile: {missing}"


def test_the_dockerfile_installs_docker_requirements_txt(dockerfile):
    files = [f for install in pip_installs(dockerfile) for f in install["requirement_files"]]
    assert "docker/requirements.txt" in files, files


def test_torch_is_the_cuda_build_of_the_pinned_versions(dockerfile, image_pins, top_pins):
    direct = {canonicalize_name(r.name): r for i in pip_installs(dockerfile) for r in i["requirements"]}
    for name in CUDA_BUILDS:
        assert name not in image_pins, f"{name} comes from the CUDA index, not docker/requirements.txt"
        assert name in direct, f"the Dockerfile does not install {name}"
        (specifier,) = direct[name].specifier
        version = Version(specifier.version)
        assert specifier.operator == "==" and version.public == top_pins[name], (name, str(specifier))
        assert version.local == CUDA_LABEL, f"{name}: the {CUDA_LABEL} build is needed, not {specifier}"
    assert f"download.pytorch.org/whl/{CUDA_LABEL}" in dockerfile


def test_facenet_pytorch_is_installed_without_its_dependencies(dockerfile):
    installs = [i for i in pip_installs(dockerfile)
                if any(canonicalize_name(r.name) == "facenet-pytorch" for r in i["requirements"])]
    assert installs and all(i["no_deps"] for i in installs)
    pinned = {str(r.specifier) for i in installs for r in i["requirements"]
              if canonicalize_name(r.name) == "facenet-pytorch"}
    makefile = (ROOT / "Makefile").read_text() if (ROOT / "Makefile").exists() else ""
    in_makefile = set(re.findall(r"facenet-pytorch(==[\w.]+)", makefile))
    assert pinned and (not in_makefile or pinned == in_makefile), (pinned, in_makefile)


def test_the_project_is_installed_without_dependencies(dockerfile):
    mapping = copies(instructions(dockerfile))
    def is_project(folder: str) -> bool:
        return folder == "." or mapping.get(f"{folder}/pyproject.toml") == "pyproject.toml"

    project = [i for i in pip_installs(dockerfile) if any(is_project(folder) for folder in i["local"])]
    assert project and all(i["no_deps"] for i in project)


def test_every_third_party_import_of_the_served_code_is_installed(installed):
    modules = imported_modules(runtime_files())
    assert "torch" in modules and "av" in modules  # the walk sees the code
    assert coverage_problems(modules, set(installed)) == []


def test_imports_the_image_does_without_stay_inside_functions():
    assert laziness_problems(imported_modules(runtime_files())) == []


def test_the_image_is_built_on_triton_24_10(steps):
    assert base_image_problems(steps) == []


def test_nothing_is_installed_when_a_container_starts(steps):
    assert [k for k, _ in steps if k == "CMD"], "no CMD"
    assert start_problems(steps) == []


def test_the_default_command_serves_the_copied_repository(steps):
    (cmd,) = [a for k, a in steps if k == "CMD"][-1:]
    assert cmd.startswith("[") and "fv2es-serve" in cmd and '"/models"' in cmd
    assert copies(steps).get("/models") == "triton_models"


def test_the_environment_matches_the_server_settings(dockerfile):
    from fv2es import config

    env = parsed(dockerfile).envs  # the image's (its last stage's)
    for name in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME"):
        assert env.get(name) == config.SERVER_ENV[name], name
    assert env.get("HF_HUB_OFFLINE") == "1"


def test_compose_builds_the_image_and_installs_nothing_at_start():
    yaml = pytest.importorskip("yaml")
    (service,) = yaml.safe_load(COMPOSE.read_text())["services"].values()
    assert service["build"]["dockerfile"] == "docker/Dockerfile" and service["image"] == "fv2es-triton:0.1.0"
    started = " ".join(str(service.get(key, "")) for key in ("command", "entrypoint"))
    assert not re.search(r"\b(pip3?|apt-get|apt)\b", started), started
    assert "fv2es-probe" in service["healthcheck"]["test"]
    assert all(port.startswith("${FV2ES_BIND_ADDRESS:-127.0.0.1}:") for port in service["ports"])


# ---- the checks fail when they should --------------------------------------------------------------


def test_a_drifted_or_unknown_pin_is_reported(top_pins):
    assert pin_problems({"av": "0.1"}, top_pins) == [f"av==0.1, but requirements.txt pins av=={top_pins['av']}"]
    assert pin_problems({"numpy": None}, top_pins) and pin_problems({"left-pad": "1.0"}, top_pins)


def test_a_missing_pin_is_reported(installed, tmp_path):
    lacking = tmp_path / "requirements.txt"
    lines = IMAGE_REQUIREMENTS.read_text().splitlines()
    lacking.write_text("\n".join(line for line in lines if not line.startswith("av==")))
    without_av = {n: v for n, v in installed.items() if n not in read_pins(IMAGE_REQUIREMENTS)} | read_pins(lacking)
    problems = coverage_problems(imported_modules(runtime_files()), set(without_av))
    assert any(p.startswith("av (") for p in problems), problems


def test_a_module_level_import_of_an_absent_package_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "eager.py").write_text("import pytriton\n\ndef f():\n    import matplotlib\n")
    problems = laziness_problems(imported_modules([tmp_path / "eager.py"]))
    assert problems == ["pytriton imported at module level in eager.py:1"]


def test_installing_at_start_or_another_base_is_reported():
    bad = instructions('FROM nvcr.io/nvidia/tritonserver:24.09-py3\nCMD bash -c "pip install -r r.txt; fv2es-serve"\n')
    assert start_problems(bad) and base_image_problems(bad)
    good = instructions(f"FROM {BASE_IMAGE} AS base\nFROM base\nCMD [\"fv2es-serve\"]\n")
    assert start_problems(good) == [] and base_image_problems(good) == []


def test_the_image_has_the_preload_library_where_the_launcher_looks(dockerfile):
    """Without it fv2es-serve refuses to start (the admin key would be on tritonserver's command line)."""
    from fv2es import config

    assert "cc -shared -fPIC" in dockerfile and "python_backend/native/fv2es_preload.c" in dockerfile
    assert f"/opt/fv2es/venv/{config.PRELOAD_LIBRARY}" in dockerfile
    assert "ENV VIRTUAL_ENV=/opt/fv2es/venv" in dockerfile
