"""Training the group model (fv2es.models.group) on real group videos: VGAF's layout (Sharma et al.
2019, the EmotiW audio-video group emotion task), or your own videos laid out the same way:

    DIR/Train/<video>.mp4   DIR/Train_labels.txt
    DIR/Val/<video>.mp4     DIR/Val_labels.txt

A labels file has a header line, then one line per video: its file name (with or without the
extension) and its label, separated by a comma, a tab or spaces: 1 / 2 / 3 as VGAF numbers them
(positive / neutral / negative) or the class names. `fv2es-train group --vgaf DIR` runs the served
pipeline in process up to the group model's inputs for each video (cached under
build/out/vgaf_cache), and trains the group model with one loss per video at the whole video's group
scores (VGAF labels whole clips), starting from the weights in --weights when they hold a group model.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fv2es import config, models, modalities, pipeline
from fv2es.inprocess import InProcessPipeline
from fv2es.tritonserver import REPOSITORY

from .. import settings
from .metrics import classification_metrics
from .weights import save_weights, weights_path

SPLITS = {"train": ("Train", "Train_labels.txt"), "validation": ("Val", "Val_labels.txt")}
VGAF_NUMBERS = {"1": "positive", "2": "neutral", "3": "negative"}
CACHE = Path(__file__).resolve().parents[1] / "out" / "vgaf_cache"


def group_step() -> pipeline.Step:
    return next(s for s in pipeline.steps() if s.name == "group")


def parse_label(text: str, where: str) -> int:
    name = VGAF_NUMBERS.get(text.strip(), text.strip().lower())
    if name not in config.GROUP_LABELS:
        raise ValueError(f"{where}: label {text!r} is none of 1, 2, 3, {', '.join(config.GROUP_LABELS)}")
    return config.GROUP_LABELS.index(name)


def read_split(root: Path, split: str) -> list[tuple[Path, int]]:
    """(video file, label index) of a split, in the labels file's order."""
    folder, labels_file = (root / name for name in SPLITS[split])
    lines = [line for line in labels_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    found = []
    for number, line in enumerate(lines[1:], start=2):
        name, label = [part for part in re.split(r"[,\t ]+", line.strip()) if part][:2]
        where = f"{labels_file}:{number}"
        matches = [folder / name] if (folder / name).is_file() else sorted(folder.glob(f"{name}.*"))
        if not matches:
            raise FileNotFoundError(f"{where}: no video {name!r} in {folder}")
        found.append((matches[0], parse_label(label, where)))
    if not found:
        raise ValueError(f"{labels_file} lists no videos")
    return found


def video_inputs(runner: InProcessPipeline, path: Path) -> dict[str, torch.Tensor]:
    """The group model's inputs for one video, as the server computes them (cached by content)."""
    data = path.read_bytes()
    cached = CACHE / f"{hashlib.sha256(data).hexdigest()[:16]}-{config.AUDIO_INPUT}.pt"
    if cached.exists():
        return torch.load(cached)
    step = group_step()
    tensors = runner.run({"VIDEO": data}, tuple(step.source(i.name) for i in step.inputs))
    inputs = {i.name: torch.from_numpy(np.ascontiguousarray(tensors[step.source(i.name)])) for i in step.inputs}
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(inputs, cached)
    return inputs


def load_videos(root: Path, split: str, runner: InProcessPipeline) -> list[tuple[dict[str, torch.Tensor], int]]:
    videos = read_split(root, split)
    out = []
    for k, (path, label) in enumerate(videos, start=1):
        out.append((video_inputs(runner, path), label))
        if k % 20 == 0 or k == len(videos):
            print(f"vgaf {split}: {k}/{len(videos)} videos through the pipeline", flush=True)
    return out


def video_log_scores(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """log of the whole video's group scores (the duration-weighted mean of its segments')."""
    _, video = model(inputs)
    return torch.log(video.clamp(min=1e-8))


def evaluate(model: torch.nn.Module, videos: list) -> dict:
    model.eval()
    with torch.no_grad():
        predicted = np.array([int(video_log_scores(model, inputs).argmax()) for inputs, _ in videos])
    return classification_metrics(np.array([label for _, label in videos]), predicted, config.GROUP_LABELS)


def train_group_on_videos(args: argparse.Namespace) -> dict:
    hp = dict(settings.TRAINING["group_videos"])
    if args.quick:
        hp["epochs"] = 1
    if args.epochs:
        hp["epochs"] = args.epochs
    torch.manual_seed(args.seed)
    started = time.time()
    runner = InProcessPipeline(REPOSITORY)
    train, validation = (load_videos(args.vgaf, split, runner) for split in ("train", "validation"))
    audio = modalities.by_name("audio")
    model = models.create("group", audio_features=audio.features, audio_index=audio.index)
    start = weights_path(args.weights, settings.GROUP_PART)
    if start.exists():
        model.load_state_dict(torch.load(start, map_location="cpu", weights_only=False)["state_dict"])
        print(f"group: starting from {start}")
    optimiser = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    best, best_state = {"metrics": {"accuracy": -1.0}, "epoch": 0}, None
    generator = torch.Generator().manual_seed(args.seed)
    for epoch in range(1, hp["epochs"] + 1):
        model.train()
        for i in torch.randperm(len(train), generator=generator).tolist():
            inputs, label = train[i]
            loss = torch.nn.functional.nll_loss(video_log_scores(model, inputs)[None], torch.tensor([label]))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        metrics = evaluate(model, validation)
        print(f"group: epoch {epoch}, validation accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}", flush=True)
        if metrics["accuracy"] > best["metrics"]["accuracy"]:
            best = {"metrics": metrics, "epoch": epoch}
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    minutes = (time.time() - started) / 60
    save_weights(weights_path(args.weights, settings.GROUP_PART), model, classes=config.GROUP_LABELS, metrics=best["metrics"],
                 epoch=best["epoch"], hyperparameters=hp, seed=args.seed,
                 data=f"group videos in VGAF's layout at {args.vgaf}: {len(train)} training, {len(validation)} validation",
                 command="fv2es-train " + " ".join(sys.argv[1:]), minutes=round(minutes, 1))
    print(f"group: saved {weights_path(args.weights, settings.GROUP_PART)} after {minutes:.1f} min")
    return best
