"""Assembles the Triton model repository from the pipeline spec (`fv2es.pipeline`): config.pbtxt
files, model.py entry points, labels, our runtime package and the exported TorchScript.

    fv2es-build                          # everything: configs, code, export of the weights in weights/
    fv2es-build --configs                # configs and code only, no export (the configs are committed)
    fv2es-build --torchscript-backend libtorch --repository build/out/triton_models_libtorch
                                         # encoders and fusion as pytorch_libtorch models (NGC image)

The repository is self-contained: it holds one copy of the runtime package `fv2es`, in the ensemble's
version folder (fv2es/1/fv2es), which every Python-backend model's model.py imports, so the
repository can be copied into a volume or another Triton's repository folder and load with only the
third-party packages installed. Triton fetches a cloud-storage repository model by model, so there the
copy is not beside the models: such a deployment installs fv2es with Triton's Python (docker/Dockerfile
does), and the model.py files import that one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import fv2es
from fv2es import config, model_configs, pipeline
from . import settings
from fv2es.graph import Step, Tensor
from fv2es.modalities import Modality

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = ROOT / "triton_models"
RUNTIME_PACKAGE = Path(fv2es.__file__).resolve().parent
BACKENDS = ("python", "libtorch")  # how the TorchScript steps are served

MODEL_PY = '''"""Triton entry point of "{name}": fv2es.serving.{runner}, from the repository's one copy of the fv2es package."""

import os
import sys
from pathlib import Path


def runtime_folder() -> Path | None:
    """The folder that holds the repository's copy of fv2es: the ensemble's version folder, beside this
    model's folder. Only one that this server's user (or root) owns and no one else can write: a
    repository served from cloud storage is fetched model by model into temporary folders, where the
    path beside this model is anyone's to create; there the fv2es installed with Triton's Python (as
    in docker/Dockerfile) is used."""
    folder = Path(__file__).resolve().parents[2] / "{ensemble}" / "1"
    for path in (folder, folder / "fv2es"):
        try:
            info = path.stat()
        except OSError:
            return None
        if info.st_uid not in (0, os.getuid()) or info.st_mode & 0o022:
            return None
    return folder


# First on sys.path, so that an installed fv2es cannot shadow the code this model was built with.
if (folder := runtime_folder()) is not None:
    sys.path.insert(0, str(folder))

try:
    from fv2es.serving.{runner} import TritonPythonModel  # noqa: E402,F401
except ModuleNotFoundError as error:
    if error.name != "fv2es":
        raise
    raise ImportError("the fv2es runtime is neither in this repository's {ensemble}/1/fv2es (owned by this "
                      "server's user, not writable by others) nor installed in Triton's Python") from None
'''

HEADER = "# Written by fv2es-build (build/repository.py) from fv2es/pipeline.py and config.py: edit those, not this file.\n"


def _tensor(message, t: Tensor) -> None:
    """One input or output of a config, from the pipeline's Tensor."""
    message.name = t.name
    message.data_type = model_configs.DataType.Value(f"TYPE_{t.dtype}")
    message.dims.extend(t.dims)
    if t.labels:
        message.label_filename = t.labels
    if t.optional:
        message.optional = True


def _tensors(model_config: model_configs.ModelConfig, inputs, outputs) -> None:
    for t in inputs:
        _tensor(model_config.input.add(), t)
    for t in outputs:
        _tensor(model_config.output.add(), t)


def model_config(step: Step, backend: str = "python") -> model_configs.ModelConfig:
    """The config of one step. `backend` "libtorch" serves a TorchScript step with Triton's PyTorch
    backend (`libtorch_step` names its tensors); the others always run in the Python backend."""
    model = model_configs.ModelConfig(name=step.name, max_batch_size=step.max_batch_size)
    if backend == "libtorch":
        model.platform = "pytorch_libtorch"
    else:
        model.backend = "python"
    _tensors(model, step.inputs, step.outputs)
    model.instance_group.add(count=step.instance_count, kind=model_configs.InstanceKind.Value(step.kind))
    if step.batched:
        model.dynamic_batching.max_queue_delay_microseconds = config.BATCH_QUEUE_DELAY_US
    if step.decoupled:
        model.model_transaction_policy.decoupled = True
    model_configs.set_parameters(model, step.parameters)
    return model


# A request for some of the ensemble's outputs makes Triton prune the steps only the others need;
# Triton 2.51's pruning (unchanged up to r25.12: ensemble_scheduler.cc, EnsembleContext's
# constructor) assumes that no step reads an ensemble output, and where one does, most subsets fail
# with "unexpected deadlock" (tests/test_ensemble_outputs.py runs that pruning on the written config).
# So no step of the written ensemble reads an ensemble output: its producer writes it under an
# internal name, its readers read that, and a copy step per producer, on the model PUBLISH_MODEL
# (fv2es.serving.publish), gives it its public name. Per producer, not per tensor: two steps that fail
# at once in one request (a dead stub of a model they share) can leave the request unanswered in 2.51.
PUBLISH_MODEL = "publish"
INTERNAL_SUFFIX = "_INTERNAL"


def read_outputs(steps: list[Step]) -> list[str]:
    """The ensemble outputs that steps read, in ENSEMBLE_OUTPUTS order."""
    read = {s.source(i.name) for s in steps for i in s.inputs}
    return [name for name in pipeline.ENSEMBLE_OUTPUTS if name in read]


def publish_model(steps: list[Step]) -> Step:
    """The copy model: per output that steps read, an optional input under the internal name and
    the output under the public name, at the same position (fv2es.serving.publish pairs them so)."""
    outputs = [t for t in pipeline.ensemble_outputs(steps) if t.name in read_outputs(steps)]
    inputs = tuple(replace(t, name=t.name + INTERNAL_SUFFIX, labels="", optional=True) for t in outputs)
    return Step(PUBLISH_MODEL, "publish", inputs, tuple(outputs))


def ensemble_steps(steps: list[Step]) -> list[Step]:
    """The steps as the ensemble wires them: `steps` reading and writing the internal names of the
    outputs they read, then one copy step per producer of such outputs, on PUBLISH_MODEL with those
    outputs' inputs alone (asking for SEGMENT_TIMES alone runs asr and its copy, not the fusion)."""
    internal = {name: name + INTERNAL_SUFFIX for name in read_outputs(steps)}
    if not internal:
        return steps
    wired = [replace(s, sources={i.name: internal.get(s.source(i.name), s.source(i.name)) for i in s.inputs},
                     targets={o.name: internal.get(s.target(o.name), s.target(o.name)) for o in s.outputs}) for s in steps]
    model = publish_model(steps)
    pairs = dict(zip((o.name for o in model.outputs), zip(model.inputs, model.outputs)))
    copies = []
    for producer in steps:  # one copy step per producer: its copies never run beside each other
        mine = [pairs[s] for s in (producer.target(o.name) for o in producer.outputs) if s in pairs]
        if mine:
            copies.append(Step(f"{PUBLISH_MODEL}_{producer.name}", model.runner, tuple(i for i, _ in mine),
                               tuple(o for _, o in mine), model=PUBLISH_MODEL))
    return wired + copies


def served_models(steps: list[Step]) -> list[Step]:
    """One step per model folder the ensemble of `steps` calls (the copy model too)."""
    return pipeline.served_models(steps) + ([publish_model(steps)] if read_outputs(steps) else [])


def ensemble_config(steps: list[Step]) -> model_configs.ModelConfig:
    steps = ensemble_steps(steps)
    pipeline.check_wiring(steps)
    pipeline.check_outputs_unread(steps)
    ensemble = model_configs.ModelConfig(name=config.ENSEMBLE_NAME, platform="ensemble", max_batch_size=0)
    _tensors(ensemble, [pipeline.ENSEMBLE_INPUT], pipeline.ensemble_outputs(steps))
    produced = pipeline.tensors_of(steps)
    for s in steps:
        step = ensemble.ensemble_scheduling.step.add(model_name=s.model_name, model_version=-1)
        step.input_map.update({i.name: s.source(i.name) for i in s.inputs_from(produced)})
        step.output_map.update({o.name: s.target(o.name) for o in s.outputs})
    # The input limits again, on the model clients address: the client reads them to refuse an
    # oversized file before sending it and to size its gRPC messages; and the unsure mark's threshold.
    model_configs.set_parameters(ensemble, {**pipeline.INPUT_LIMITS, **pipeline.RESULT_PARAMETERS})
    return ensemble


def libtorch_step(step: Step, arguments: list[tuple[str, str]]) -> Step:
    """A TorchScript step for Triton's PyTorch backend, whose naming convention is: inputs named as
    the arguments of the module's forward() (or, when forward takes one Dict[str, Tensor], as the
    dictionary's keys: the step's own names), outputs `<name>__<index>`. The ensemble keeps its tensor
    names through the step's sources and targets. The Python runner's parameters do not apply."""
    outputs = tuple(replace(t, name=f"{t.name}__{k}") for k, t in enumerate(step.outputs))
    targets = {o.name: step.target(t.name) for o, t in zip(outputs, step.outputs)}
    from fv2es.models import takes_dictionary  # noqa: PLC0415 - torch only for the libtorch variant

    if takes_dictionary(arguments):
        return replace(step, outputs=outputs, targets=targets, parameters={"INFERENCE_MODE": "true"})
    argument_names = [name for name, _ in arguments]
    if len(argument_names) != len(step.inputs):
        raise SystemExit(f"{step.name}: model.pt's forward takes {argument_names}, the pipeline gives {[i.name for i in step.inputs]}")
    inputs = tuple(replace(t, name=arg) for t, arg in zip(step.inputs, argument_names))
    return replace(
        step, inputs=inputs, outputs=outputs, targets=targets,
        sources={arg: step.source(t.name) for t, arg in zip(step.inputs, argument_names)},
        parameters={"INFERENCE_MODE": "true"},
    )


def file_arguments(model_file: Path) -> list[tuple[str, str]]:
    """The arguments (name, type) of a TorchScript file's forward(), without self."""
    import torch  # noqa: PLC0415 - only the libtorch variant reads the exported modules
    from fv2es.models import forward_arguments  # noqa: PLC0415

    return forward_arguments(torch.jit.load(str(model_file), map_location="cpu"))


def served_steps(weights: str, repository: Path, backend: str = "python", modalities: tuple[Modality, ...] | None = None,
                 sparse_visual: bool | None = None) -> list[Step]:
    """The pipeline's steps as this repository serves them (`modalities`: default fv2es.modalities;
    `sparse_visual`: default config.SPARSE_VISUAL)."""
    steps = pipeline.steps(weights, modalities=modalities, sparse_visual=sparse_visual)
    if backend == "libtorch":
        steps = [libtorch_step(s, file_arguments(repository / s.model_name / "1" / "model.pt")) if s.torchscript else s for s in steps]
    return steps


def runtime_folder(repository: Path) -> Path:
    """Where the repository's one copy of the runtime package goes: the ensemble's version folder (every
    repository has the ensemble; Triton reads nothing else there)."""
    return repository / config.ENSEMBLE_NAME / "1"


def copy_runtime_package(version_dir: Path) -> None:
    """The runtime package `fv2es`, without caches, into `version_dir` (replacing an older copy)."""
    target = version_dir / "fv2es"
    if target.exists():
        shutil.rmtree(target)
    # copy, not copy2: the copies get the time of the build, which `make` compares with the sources.
    shutil.copytree(RUNTIME_PACKAGE, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), copy_function=shutil.copy)
    # The model.py files import it only where no one but its owner can write (MODEL_PY), whatever the umask.
    for path in (version_dir, target, *target.rglob("*")):
        path.chmod(path.stat().st_mode & ~0o022)


def write_configs(weights: str, repository: Path = REPOSITORY, backend: str = "python",
                  modalities: tuple[Modality, ...] | None = None, sparse_visual: bool | None = None) -> None:
    """Every config.pbtxt, model.py, labels file and code copy; the TorchScript files are export's."""
    steps = served_steps(weights, repository, backend, modalities, sparse_visual)
    # The live stream calls the steps by their Python-backend tensor names: not in the libtorch variant.
    models = served_models(steps) + ([pipeline.stream_step(steps)] if backend == "python" else [])
    for s in models:
        folder = repository / s.name
        (folder / "1").mkdir(parents=True, exist_ok=True)
        libtorch = backend == "libtorch" and s.torchscript
        (folder / "config.pbtxt").write_text(model_configs.to_text(model_config(s, "libtorch" if libtorch else "python"), HEADER))
        shutil.rmtree(folder / "1" / "fv2es", ignore_errors=True)  # a copy of the runtime per model, as before
        if libtorch:  # the PyTorch backend reads model.pt alone
            (folder / "1" / "model.py").unlink(missing_ok=True)
        else:
            (folder / "1" / "model.py").write_text(MODEL_PY.format(name=s.name, runner=s.runner, ensemble=config.ENSEMBLE_NAME))
        for file in {t.labels for t in s.outputs if t.labels}:
            write_labels(folder / file)
    ensemble = repository / config.ENSEMBLE_NAME
    remove_stale_models(repository, {s.name for s in models} | {config.ENSEMBLE_NAME})
    (ensemble / "1").mkdir(parents=True, exist_ok=True)
    (ensemble / "1" / ".gitkeep").write_text("")
    copy_runtime_package(runtime_folder(repository))
    (ensemble / "config.pbtxt").write_text(model_configs.to_text(ensemble_config(steps), HEADER))
    for file in pipeline.LABEL_FILES:
        write_labels(ensemble / file)


def copy_exports(repository: Path, target: Path, names) -> None:
    """The named models' TorchScript files and their provenance, from a built repository into `target`."""
    for name in names:
        for file in ("model.pt", "provenance.json"):
            shutil.copy(repository / name / "1" / file, target / name / "1" / file)


def sparse_variant(target: Path, sparse_visual: bool, repository: Path = REPOSITORY, weights_dir: Path = ROOT / settings.WEIGHTS_DIR) -> Path:
    """A repository at `target` that serves the built one's exported models with the sparse face
    selection on or off (its configs written for that setting; the selection exported if it serves
    it): what the tests and `make bench` compare the two settings on, without another full export."""
    import torch  # noqa: PLC0415 - the export of the selection
    from fv2es import models  # noqa: PLC0415

    from .export import trained_sparse  # noqa: PLC0415

    write_configs(weights_description(weights_dir, sparse_visual), target, sparse_visual=sparse_visual)
    copy_exports(repository, target, [step.name for step in pipeline.served_models(pipeline.steps(sparse_visual=sparse_visual))
                                      if step.torchscript and step.name != models.SPARSE_MODEL])
    if sparse_visual:
        with torch.no_grad():
            models.to_torchscript(models.SPARSE_MODEL, trained_sparse(weights_dir)).save(str(target / models.SPARSE_MODEL / "1" / "model.pt"))
    return target


def asr_model_variant(target: Path, asr_model: str, repository: Path = REPOSITORY, weights_dir: Path = ROOT / settings.WEIGHTS_DIR) -> Path:
    """A repository at `target` built for another of config.ASR_MODELS, as `make build` builds one after
    ASR_MODEL is set to it in config.py: its configs and exports from that model's weights, and its copy
    of the runtime serving it. What the tests and benchmarks/asr_models.py serve beside the built one;
    the models trained without speech states are copied from that one, not exported again, when it
    exported them from the same weight files."""
    from .export import ASR_INDEPENDENT, EXPORT_SOURCES, export_all, weight_file_record  # noqa: PLC0415 - torch is only needed for export
    from .training.weights import weights_path  # noqa: PLC0415

    with settings.asr_model_set(asr_model):
        write_configs(weights_description(weights_dir), target)
        for name in ASR_INDEPENDENT:
            built = json.loads((repository / name / "1" / "provenance.json").read_text())["weights"]
            if built != [weight_file_record(weights_path(weights_dir, part)) for part in EXPORT_SOURCES[name]]:
                raise ValueError(f"{repository / name} was not exported from {weights_dir}'s weights: `make build` it first")
        copy_exports(repository, target, ASR_INDEPENDENT)
        export_all(target, weights_dir, skip=ASR_INDEPENDENT)
    set_runtime_asr_model(runtime_folder(target) / "fv2es" / "config.py", asr_model)
    return target


def set_runtime_asr_model(config_py: Path, asr_model: str) -> None:
    """A runtime copy's config.py with its one ASR_MODEL line set to `asr_model`: the edit a deployment makes."""
    text = config_py.read_text()
    lines = re.findall(r"^ASR_MODEL = .*$", text, flags=re.MULTILINE)
    if len(lines) != 1:
        raise ValueError(f"{config_py} has {len(lines)} ASR_MODEL lines, not one")
    config_py.write_text(text.replace(lines[0], f"ASR_MODEL = {json.dumps(asr_model)}"))


def write_labels(path: Path) -> None:
    """A label file (pipeline.LABEL_FILES): its class names, one per line."""
    path.write_text("\n".join(pipeline.LABEL_FILES[path.name]) + "\n")


def remove_stale_models(repository: Path, keep: set[str]) -> None:
    """Deletes the folders of models this script wrote before that the pipeline no longer has (the
    mel model when AUDIO_INPUT is "whisper"): a model repository serves every folder in it. Folders
    this script did not write are left alone."""
    for pbtxt in repository.glob("*/config.pbtxt"):
        first_line = pbtxt.read_text().split("\n", 1)[0]
        if pbtxt.parent.name not in keep and first_line.startswith("# Written by") and "build/repository.py" in first_line:
            shutil.rmtree(pbtxt.parent)


def weights_description(weights_dir: Path, sparse_visual: bool | None = None) -> str:
    """Names the exact weight files the repository serves (their joint hash): the branches' and the
    fusion's, which every repository needs, and the group model's and the face selection's where
    the folder has them (the export refuses a folder without what it serves). MODEL_INFO carries it."""
    sparse_visual = config.SPARSE_VISUAL if sparse_visual is None else sparse_visual
    files = [weights_dir / settings.weight_file(part) for part in settings.WEIGHT_PARTS]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise SystemExit(f"no trained weights: {', '.join(missing)} missing; `fv2es-train all` makes them")
    served = (settings.GROUP_PART, *((settings.SPARSE_PART,) if sparse_visual else ()))
    files += [f for f in (weights_dir / settings.weight_file(part) for part in served) if f.exists()]
    digest = hashlib.sha256(b"".join(hashlib.sha256(f.read_bytes()).digest() for f in files)).hexdigest()[:12]
    return f"V2EM trained by build/train.py ({weights_dir.name}/ sha256 {digest}; see MODEL_CARD.md)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", action="store_true", help="only write configs, entry points and code, export nothing")
    parser.add_argument("--torchscript-backend", choices=BACKENDS, default="python",
                        help="serve the encoders and the fusion with the Python backend (default) or Triton's PyTorch "
                             "backend (pytorch_libtorch: the NGC image has it; needs the export)")
    parser.add_argument("--repository", type=Path, default=REPOSITORY)
    parser.add_argument("--weights", type=Path, default=ROOT / settings.WEIGHTS_DIR, help="trained weights to export")
    parser.add_argument("--sparse-visual", choices=("on", "off"), default="on" if config.SPARSE_VISUAL else "off",
                        help="FE2E's sparse attention over the face rows before the visual encoder (default: "
                             "config.SPARSE_VISUAL, %(default)s)")
    args = parser.parse_args()
    sparse_visual = args.sparse_visual == "on"
    if args.torchscript_backend == "libtorch" and args.configs:
        parser.error("--torchscript-backend libtorch names the tensors after the exported modules: it needs the export")
    description = weights_description(args.weights, sparse_visual)
    write_configs(description, args.repository, sparse_visual=sparse_visual)
    if not args.configs:
        from .export import export_all  # noqa: PLC0415 - torch is only needed for export

        export_all(args.repository, args.weights, args.torchscript_backend, sparse_visual)
        if args.torchscript_backend == "libtorch":
            write_configs(description, args.repository, "libtorch", sparse_visual=sparse_visual)
    print(f"model repository ready: {args.repository} (TorchScript steps on the {args.torchscript_backend} backend)")


if __name__ == "__main__":
    main()
