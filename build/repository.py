"""Assembles the Triton model repository: config.pbtxt files, model.py stubs, labels and TorchScript.

    python build/repository.py            # configs + export of the trained weights in weights/
    python build/repository.py --configs  # rewrite the config files only (they are committed)

Every value comes from `fv2es.config`, so the repository cannot drift from the code; a test checks
that the committed configs equal what this script writes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python_backend"))

from fv2es import config  # noqa: E402

REPOSITORY = ROOT / "triton_models"
F = config.FEATURE_DIM
C = len(config.LABELS)
TEXT_DIM = config.TEXT_FEATURE_DIM  # checked against the text model at export

# Python stub that every model folder gets: the code lives in python_backend/fv2es/serving.
MODEL_PY = '''"""Triton entry point; the implementation is fv2es.serving.{module}."""

import sys
from pathlib import Path

# The repository layout: <root>/triton_models/<model>/<version>/model.py, code in <root>/python_backend.
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "python_backend"))

from fv2es.serving.{module} import TritonPythonModel  # noqa: E402,F401
'''


@dataclass
class Tensor:
    name: str
    dtype: str
    dims: list[int]
    label_filename: str | None = None


@dataclass
class Model:
    name: str
    module: str  # fv2es.serving.<module>
    inputs: list[Tensor]
    outputs: list[Tensor]
    max_batch_size: int = 0
    kind: str = "KIND_CPU"
    parameters: dict[str, str] = field(default_factory=dict)
    dynamic_batching: bool = False


def string(name, dims):
    return Tensor(name, "TYPE_STRING", dims)


def fp32(name, dims):
    return Tensor(name, "TYPE_FP32", dims)


def int64(name, dims):
    return Tensor(name, "TYPE_INT64", dims)


def boolean(name, dims):
    return Tensor(name, "TYPE_BOOL", dims)


INPUT_LIMITS = {"max_input_bytes": str(config.MAX_INPUT_BYTES), "max_duration_s": str(config.MAX_DURATION_S)}
# The models after demux validate times, audio lengths and segment counts against the same limit.
DURATION_LIMIT = {"max_duration_s": str(config.MAX_DURATION_S)}


def pipeline_models(weights: str) -> list[Model]:
    """The steps of the ensemble, in order. `weights` says where the encoder weights come from.
    AUDIO_INPUT says which input the audio encoder takes: the Whisper states that asr gives
    ("whisper"; no mel model) or the mel model's chunks ("mel")."""
    audio_input = config.AUDIO_INPUT
    if audio_input not in config.AUDIO_INPUTS:
        raise ValueError(f"AUDIO_INPUT {audio_input!r} is not one of {config.AUDIO_INPUTS}")
    m, t = config.N_MELS, config.CHUNK_FRAMES
    s = config.FACE_SIZE
    batch = config.ENCODER_MAX_BATCH
    whisper = audio_input == "whisper"
    speech_dim = 2 * config.SPEECH_STATE_DIM
    asr_outputs = [fp32("SEGMENT_TIMES", [-1, 2]), string("TRANSCRIPTS", [-1]), boolean("SEGMENT_HAS_SPEECH", [-1]),
                   int64("TEXT_IDS", [-1, config.TEXT_MAX_TOKENS]), int64("TEXT_MASK", [-1, config.TEXT_MAX_TOKENS])]
    if whisper:
        asr_outputs += [fp32("SPEECH_ROWS", [-1, speech_dim]), int64("SPEECH_SEGMENT", [-1])]
    audio_rows = fp32("SPEECH_ROWS", [speech_dim]) if whisper else fp32("MEL_CHUNKS", [m, t])
    mel = Model(
        "mel", "mel",
        [fp32("AUDIO", [-1]), fp32("SEGMENT_TIMES", [-1, 2])],
        [fp32("MEL_CHUNKS", [-1, m, t]), int64("MEL_SEGMENT", [-1])],
        kind="KIND_AUTO",
        parameters=DURATION_LIMIT,
    )
    return [
        Model(
            "demux", "demux",
            [string("VIDEO", [1])],
            [fp32("AUDIO", [-1]), fp32("DURATION", [1])],
            parameters=INPUT_LIMITS,
        ),
        Model(
            "face_crop", "face_crop",
            [string("VIDEO", [1]), fp32("DURATION", [1])],
            [fp32("FACES", [-1, 1, s, s]), fp32("FACE_TIMES", [-1])],
            kind="KIND_AUTO",
            parameters={"detector": config.FACE_DETECTOR, "cascade": config.FACE_CASCADE, **INPUT_LIMITS},
        ),
        Model(
            "asr", "asr",
            [fp32("AUDIO", [-1]), fp32("DURATION", [1])],
            asr_outputs,
            kind="KIND_AUTO",
            parameters={"asr_model": config.ASR_MODEL, "beam_size": str(config.ASR_BEAM_SIZE),
                        "language": config.ASR_LANGUAGE, "cpu_threads": str(config.ASR_CPU_THREADS),
                        "temperature": str(config.ASR_TEMPERATURE), "text_model": config.TEXT_MODEL, "window_s": str(config.WINDOW_S),
                        "audio_input": audio_input, **DURATION_LIMIT},
        ),
        *([] if whisper else [mel]),
        Model(
            "assign_faces", "assign_faces",
            [fp32("FACE_TIMES", [-1]), fp32("SEGMENT_TIMES", [-1, 2])],
            [int64("FACE_SEGMENT", [-1]), boolean("SEGMENT_HAS_FACE", [-1])],
            parameters=DURATION_LIMIT,
        ),
        Model(
            "audio_encoder", "torchscript",
            [audio_rows], [fp32("AUDIO_FEATURES", [F])],
            max_batch_size=batch["audio_encoder"], kind="KIND_AUTO", dynamic_batching=True,
            parameters={"weights": weights, "rows_per_forward": str(config.ENCODER_ROWS_PER_FORWARD["audio_encoder"])},
        ),
        Model(
            "visual_encoder", "torchscript",
            [fp32("FACES", [1, s, s])], [fp32("VISUAL_FEATURES", [F])],
            max_batch_size=batch["visual_encoder"], kind="KIND_AUTO", dynamic_batching=True,
            parameters={"weights": weights, "rows_per_forward": str(config.ENCODER_ROWS_PER_FORWARD["visual_encoder"])},
        ),
        Model(
            "text_encoder", "torchscript",
            [int64("TEXT_IDS", [config.TEXT_MAX_TOKENS]), int64("TEXT_MASK", [config.TEXT_MAX_TOKENS])],
            [fp32("TEXT_FEATURES", [TEXT_DIM])],
            max_batch_size=batch["text_encoder"], kind="KIND_AUTO", dynamic_batching=True,
            parameters={"weights": weights, "rows_per_forward": str(config.ENCODER_ROWS_PER_FORWARD["text_encoder"])},
        ),
        Model(
            "fusion", "torchscript",
            [fp32("AUDIO_FEATURES", [-1, F]), int64("AUDIO_SEGMENT", [-1]), fp32("VISUAL_FEATURES", [-1, F]),
             int64("VISUAL_SEGMENT", [-1]), fp32("TEXT_FEATURES", [-1, TEXT_DIM]), boolean("TEXT_PRESENT", [-1])],
            [Tensor("SEGMENT_SCORES", "TYPE_FP32", [-1, C], label_filename="labels.txt")],
            kind="KIND_AUTO",
            parameters={"weights": weights, **DURATION_LIMIT},
        ),
        Model(
            "aggregate", "aggregate",
            [fp32("SEGMENT_SCORES", [-1, C]), fp32("SEGMENT_TIMES", [-1, 2])],
            [Tensor("VIDEO_SCORES", "TYPE_FP32", [C], label_filename="labels.txt"), string("LABELS", [C]), string("MODEL_INFO", [1])],
            parameters={"weights": weights, "labels_file": "labels.txt", **DURATION_LIMIT},
        ),
    ]


def renamed_inputs() -> dict[str, dict[str, str]]:
    """Ensemble wiring: model input name -> ensemble tensor, for inputs whose names differ."""
    audio_segment = "SPEECH_SEGMENT" if config.AUDIO_INPUT == "whisper" else "MEL_SEGMENT"
    return {"fusion": {"AUDIO_SEGMENT": audio_segment, "VISUAL_SEGMENT": "FACE_SEGMENT", "TEXT_PRESENT": "SEGMENT_HAS_SPEECH"}}


ENSEMBLE_OUTPUTS = ["SEGMENT_TIMES", "TRANSCRIPTS", "SEGMENT_SCORES", "SEGMENT_HAS_SPEECH", "SEGMENT_HAS_FACE",
                    "VIDEO_SCORES", "LABELS", "MODEL_INFO"]


def _tensor_pbtxt(t: Tensor) -> str:
    extra = f'\n    label_filename: "{t.label_filename}"' if t.label_filename else ""
    return f'  {{\n    name: "{t.name}"\n    data_type: {t.dtype}\n    dims: [ {", ".join(map(str, t.dims))} ]{extra}\n  }}'


def _tensors_pbtxt(key: str, tensors: list[Tensor]) -> str:
    return f"{key} [\n" + ",\n".join(_tensor_pbtxt(t) for t in tensors) + "\n]\n"


HEADER = "# Written by build/repository.py from python_backend/fv2es/config.py: edit those, not this file.\n"


def model_pbtxt(model: Model) -> str:
    text = HEADER
    text += f'name: "{model.name}"\nbackend: "python"\nmax_batch_size: {model.max_batch_size}\n'
    text += _tensors_pbtxt("input", model.inputs) + _tensors_pbtxt("output", model.outputs)
    text += f"instance_group [ {{ count: {config.INSTANCE_COUNTS.get(model.name, 1)}, kind: {model.kind} }} ]\n"
    if model.dynamic_batching:
        text += f"dynamic_batching {{ max_queue_delay_microseconds: {config.BATCH_QUEUE_DELAY_US} }}\n"
    for key, value in model.parameters.items():
        text += f'parameters {{ key: "{key}" value: {{ string_value: {json.dumps(value)} }} }}\n'
    return text


def ensemble_pbtxt(models: list[Model]) -> str:
    produced = {t.name: t for m in models for t in m.outputs}
    text = HEADER
    text += f'name: "{config.ENSEMBLE_NAME}"\nplatform: "ensemble"\nmax_batch_size: 0\n'
    text += _tensors_pbtxt("input", [string("VIDEO", [1])])
    outputs = []
    for name in ENSEMBLE_OUTPUTS:
        t = produced[name]
        batched_dims = [-1] + t.dims if next(m for m in models if t in m.outputs).max_batch_size else t.dims
        outputs.append(Tensor(t.name, t.dtype, batched_dims, t.label_filename))
    text += _tensors_pbtxt("output", outputs)
    steps = []
    for m in models:
        renamed = renamed_inputs().get(m.name, {})
        maps = "".join(f'      input_map {{ key: "{i.name}" value: "{renamed.get(i.name, i.name)}" }}\n' for i in m.inputs)
        maps += "".join(f'      output_map {{ key: "{o.name}" value: "{o.name}" }}\n' for o in m.outputs)
        steps.append(f'    {{\n      model_name: "{m.name}"\n      model_version: -1\n{maps}    }}')
    text += "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}\n"
    # The input limits again, on the model clients address: the client reads them to refuse an
    # oversized file before sending it and to size its gRPC messages.
    for key, value in INPUT_LIMITS.items():
        text += f'parameters {{ key: "{key}" value: {{ string_value: {json.dumps(value)} }} }}\n'
    return text


def write_configs(weights: str, repository: Path = REPOSITORY) -> None:
    models = pipeline_models(weights)
    labels = "\n".join(config.LABELS) + "\n"
    for m in models:
        folder = repository / m.name
        (folder / "1").mkdir(parents=True, exist_ok=True)
        (folder / "config.pbtxt").write_text(model_pbtxt(m))
        (folder / "1" / "model.py").write_text(MODEL_PY.format(module=m.module))
        if any(t.label_filename for t in m.outputs):
            (folder / "labels.txt").write_text(labels)
    ensemble = repository / config.ENSEMBLE_NAME
    remove_stale_models(repository, {m.name for m in models} | {config.ENSEMBLE_NAME})
    (ensemble / "1").mkdir(parents=True, exist_ok=True)
    (ensemble / "1" / ".gitkeep").write_text("")
    (ensemble / "config.pbtxt").write_text(ensemble_pbtxt(models))
    (ensemble / "labels.txt").write_text(labels)


def remove_stale_models(repository: Path, keep: set[str]) -> None:
    """Deletes the folders of models this script wrote before that the pipeline no longer has (the
    mel model when AUDIO_INPUT is "whisper"): a model repository serves every folder in it. Folders
    this script did not write are left alone."""
    for pbtxt in repository.glob("*/config.pbtxt"):
        if pbtxt.parent.name not in keep and pbtxt.read_text().startswith(HEADER):
            shutil.rmtree(pbtxt.parent)


def weights_description(weights_dir: Path) -> str:
    """Names the exact weight files the repository serves (their joint hash); MODEL_INFO carries it."""
    files = [weights_dir / config.weight_file(part) for part in config.WEIGHT_PARTS]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise SystemExit(f"no trained weights: {', '.join(missing)} missing; `python build/train.py all` makes them")
    digest = hashlib.sha256(b"".join(hashlib.sha256(f.read_bytes()).digest() for f in files)).hexdigest()[:12]
    return f"V2EM trained by build/train.py ({weights_dir.name}/ sha256 {digest}; see MODEL_CARD.md)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", action="store_true", help="only write configs and stubs, export nothing")
    parser.add_argument("--repository", type=Path, default=REPOSITORY)
    parser.add_argument("--weights", type=Path, default=ROOT / config.WEIGHTS_DIR, help="trained weights to export")
    args = parser.parse_args()
    write_configs(weights_description(args.weights), args.repository)
    if not args.configs:
        from export import export_all  # noqa: PLC0415 - torch is only needed for export

        export_all(args.repository, args.weights)
    print(f"model repository ready: {args.repository}")


if __name__ == "__main__":
    main()
