"""The shipped weight files: one per branch plus the fusion weights, with what produced them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import torch

from fv2es import config
from .. import settings
from fv2es.models.branches import create_branch

ROOT = Path(__file__).resolve().parents[2]
BRANCHES = settings.BRANCHES


def weights_path(weights_dir: Path, part: str) -> Path:
    return weights_dir / settings.weight_file(part)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def save_weights(path: Path, model: torch.nn.Module, **record) -> None:
    """State dict (float32, on CPU) and its record: classes, metrics, data, command, commit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    full = model.trained_state_dict() if hasattr(model, "trained_state_dict") else model.state_dict()
    state = {k: v.detach().cpu() for k, v in full.items()}
    # A record's own "label_set" (multimodal training on another corpus) overrides the served one.
    torch.save({"state_dict": state, "label_set": config.LABEL_SET, "torch": torch.__version__, "commit": git_commit(), **record}, path)


def load_weights(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"no trained weights at {path}: run `fv2es-train` (see MODEL_CARD.md)")
    record = torch.load(path, map_location="cpu", weights_only=False)
    if record.get("label_set") != config.LABEL_SET:
        raise ValueError(
            f"{path} was trained for label set {record.get('label_set')!r} but config.LABEL_SET is {config.LABEL_SET!r}"
        )
    return record


def load_branch(branch: str, weights_dir: Path) -> torch.nn.Module:
    """A trained branch (training form, eval mode) from its weights file."""
    record = load_weights(weights_path(weights_dir, branch))
    if branch == "audio" and record.get("audio_input", "mel") != config.AUDIO_INPUT:
        raise ValueError(f"{weights_path(weights_dir, branch)} was trained on {record.get('audio_input', 'mel')} input, "
                         f"but config.AUDIO_INPUT is {config.AUDIO_INPUT!r}")
    model = create_branch(branch, len(record["classes"]))
    load_trained_state(model, record, branch)
    return model.eval()


def load_trained_state(model: torch.nn.Module, record: dict, branch: str) -> None:
    """A weights record's state into a branch, refused when it does not fit. A text branch's file
    holds only its trained part (the frozen rest comes from the pretrained model); the training-only
    pooled head is not needed to serve."""
    missing, unexpected = model.load_state_dict(record["state_dict"], strict=False)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad} | {n for n, _ in model.named_buffers()}
    absent = {n for n in set(missing) - frozen if not n.startswith("pooled_head.")}
    if unexpected or absent:
        raise ValueError(f"{branch} weights do not fit the model: missing {sorted(absent)}, unexpected {unexpected}")
