"""Exports the encoders and the fusion model to TorchScript files in the model repository."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python_backend"))

from fv2es import config, models  # noqa: E402

UNTRAINED = f"UNTRAINED: random initialisation with seed {config.EXPORT_SEED}; scores carry no meaning yet"


def export_all(repository: Path) -> None:
    torch.manual_seed(config.EXPORT_SEED)
    for name in models.ENCODER_NAMES:
        model = models.create(name)
        if name == "text_encoder" and model.hidden_size != config.TEXT_FEATURE_DIM:
            raise SystemExit(f"{config.TEXT_MODEL} gives {model.hidden_size}-d features: set TEXT_FEATURE_DIM to match")
        scripted = models.to_torchscript(name, model)
        target = repository / name / "1" / "model.pt"
        scripted.save(str(target))
        provenance = {"weights": "pretrained, frozen" if name == "text_encoder" else UNTRAINED, "torch": torch.__version__}
        (target.parent / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
        print(f"exported {name}: {target.stat().st_size / 1e6:.1f} MB")
