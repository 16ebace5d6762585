"""Exports the trained weights to TorchScript files in the model repository.

audio_encoder and visual_encoder are the encoders of the audio and visual branches (RepVGG
re-parameterised, on a copy, to single 3x3 convs); text_encoder is the text branch's encoder (the
pretrained TEXT_MODEL with its fine-tuned top layers, traced); fusion holds the branches' sequence encoders and heads and the fitted modality
weights. Every exported file is checked against its eager module before it is written.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from fv2es import config, modalities, models
from . import settings
from fv2es.models.checked import checked
from .training.weights import load_branch, load_weights, weights_path

MAX_EXPORT_DIFFERENCE = 1e-4


def trained_models(weights_dir: Path) -> dict[str, torch.nn.Module]:
    """The four served modules (training form, eval mode), by repository name."""
    records = {part: load_weights(weights_path(weights_dir, part)) for part in settings.WEIGHT_PARTS}
    check_asr_model(records["audio"], weights_dir)  # before the branches load: a refusal is quick
    branches = {b: load_branch(b, weights_dir) for b in settings.BRANCHES}
    fusion = models.create("fusion", classes={b: tuple(records[b]["classes"]) for b in settings.BRANCHES})
    fusion.load_branches(branches)
    text = branches["text"]
    fitted = records["fusion"]["state_dict"]
    with torch.no_grad():
        fusion.modality_weights.copy_(fitted["modality_weights"])
        fusion.log_scale.copy_(fitted["log_scale"])
        if "branch_temperature" in fitted:  # absent in weights fitted before calibration (and jointly trained ones)
            fusion.branch_temperature.copy_(fitted["branch_temperature"])
    if text.encoder.hidden_size != config.TEXT_FEATURE_DIM:
        raise SystemExit(f"{config.TEXT_MODEL} gives {text.encoder.hidden_size}-d features: set TEXT_FEATURE_DIM to match")
    # The text branch's encoder: the pretrained model with its fine-tuned top layers from text.pt.
    return {**{modalities.by_name(b).encoder: branch.encoder for b, branch in branches.items()}, "fusion": fusion.eval()}


def trained_group(weights_dir: Path) -> torch.nn.Module:
    """The group model (training form, eval mode) from its weights file (build/training/group.py)."""
    record = load_weights(weights_path(weights_dir, settings.GROUP_PART))
    audio = modalities.by_name("audio")
    model = models.create("group", audio_features=audio.features, audio_index=audio.index)
    model.load_state_dict(record["state_dict"])
    return model.eval()


def trained_sparse(weights_dir: Path) -> torch.nn.Module:
    """The sparse face selection (training form, eval mode) from its weights file (build/training/sparse.py),
    its nucleus mass from config.SPARSE_VISUAL_MASS."""
    path = weights_path(weights_dir, settings.SPARSE_PART)
    if not path.exists():
        raise SystemExit(f"the sparse visual attention is on but {path} is missing: `fv2es-train sparse` makes it")
    model = models.create(models.SPARSE_MODEL)
    model.load_state_dict(load_weights(path)["state_dict"])
    return model.eval()


def check_asr_model(audio_record: dict, weights_dir: Path) -> None:
    """Whisper-state audio weights are for the ASR model they were trained on (the served asr model
    checks the same when it loads)."""
    if config.AUDIO_INPUT != "whisper":
        return
    from fv2es.asr import SpeechRecognizer, check_state_dim, check_trained_on  # noqa: PLC0415

    try:
        check_trained_on(config.ASR_MODEL, audio_record.get("asr_model"))
        check_state_dim(config.ASR_MODEL, SpeechRecognizer(config.ASR_MODEL).state_dim)
    except ValueError as error:
        raise SystemExit(f"{weights_path(weights_dir, 'audio')}: {error}") from None


def export_difference(name: str, eager: torch.nn.Module, scripted: torch.jit.ScriptModule) -> float:
    """Max abs difference between eager and TorchScript outputs on example inputs of two batch sizes."""
    worst = 0.0
    for batch in (1, 5):
        torch.manual_seed(batch)
        inputs = models.example_inputs(name, batch=batch)
        with torch.no_grad():
            ours, theirs = scripted(*inputs), eager(*inputs)
        for a, b in zip(*(x if isinstance(x, tuple) else (x,) for x in (ours, theirs))):
            worst = max(worst, (a - b).abs().max().item())
    return worst


def weight_file_record(path: Path) -> dict:
    """What the repository records about a weights file: which file, its hash, how it was made."""
    record = load_weights(path)
    return {
        "file": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        **{key: record.get(key) for key in ("command", "commit", "epoch", "data")},
    }


# The weight parts each exported model is made of (its provenance lists their files).
EXPORT_SOURCES = {"audio_encoder": ["audio"], "visual_encoder": ["visual"], "text_encoder": ["text"], "fusion": list(settings.WEIGHT_PARTS),
                  "group": [settings.GROUP_PART], models.SPARSE_MODEL: [settings.SPARSE_PART]}
# The ones trained without the speech states: every ASR model's repository serves the same files.
ASR_INDEPENDENT = tuple(name for name, parts in EXPORT_SOURCES.items() if not set(parts) & set(settings.ASR_PARTS))


def export_all(repository: Path, weights_dir: Path, backend: str = "python", sparse_visual: bool | None = None,
               skip: tuple[str, ...] = ()) -> None:
    """Every TorchScript file of the repository but those in `skip`, checked against eager. For Triton's
    PyTorch backend ("libtorch") the text encoder and the fusion carry their input checks inside (models/checked.py)."""
    served = {**trained_models(weights_dir), "group": trained_group(weights_dir)}
    if config.SPARSE_VISUAL if sparse_visual is None else sparse_visual:
        served[models.SPARSE_MODEL] = trained_sparse(weights_dir)
    for name, module in served.items():
        if name in skip:
            continue
        scripted = models.to_torchscript(name, module)
        difference = export_difference(name, module, scripted)
        if difference > MAX_EXPORT_DIFFERENCE:
            raise SystemExit(f"{name}: TorchScript differs from eager by {difference:.2e} (> {MAX_EXPORT_DIFFERENCE})")
        if backend == "libtorch":
            scripted = checked(name, scripted)
        target = repository / name / "1" / "model.pt"
        scripted.save(str(target))
        provenance = {
            "weights": [weight_file_record(weights_path(weights_dir, part)) for part in EXPORT_SOURCES[name]],
            "pretrained": f"{config.TEXT_MODEL}, top {config.TEXT_TRAINABLE_LAYERS} layers fine-tuned" if name == "text_encoder" else None,
            "max_abs_difference_to_eager": difference,
            "torch": torch.__version__,
            "backend": backend,
        }
        (target.parent / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
        print(f"exported {name}: {target.stat().st_size / 1e6:.1f} MB, TorchScript vs eager max abs difference {difference:.1e}")
