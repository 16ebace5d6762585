"""One training loop for every branch: AdamW + one-cycle schedule, progress bars, seeded data order,
a resumable checkpoint after every epoch and the best epoch kept by a validation metric."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .metrics import classification_metrics, format_metrics, multilabel_metrics

Batch = tuple[tuple[torch.Tensor, ...], torch.Tensor]


@dataclass
class Task:
    """What the loop needs to know about one branch."""

    name: str
    model: nn.Module
    classes: tuple[str, ...]
    n_train: int
    n_val: int
    # (training?, generator) -> batches of (model inputs, targets); a generator only when training.
    train_batches: Callable[[torch.Generator, int], Iterator[Batch]]
    val_batches: Callable[[int], Iterator[Batch]]
    select_by: str = "accuracy"  # the validation metric that picks the best epoch
    multi_label: bool = False
    # Training examples per class (single-label tasks); hp["class_weight_power"] > 0 weights the loss by them.
    class_counts: tuple[int, ...] | None = None
    # A task's own loss (hp -> loss(logits, targets)) and validation metrics ((logits, targets) -> dict
    # with the keys of classification_metrics), where targets carry more than a class index.
    criterion: Callable[[dict], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] | None = None
    metrics: Callable[[np.ndarray, np.ndarray], dict] | None = None


def class_weights(counts: tuple[int, ...], power: float) -> torch.Tensor:
    """Per-class loss weights (n_total / (n_classes * count_c)) ** power: 0 = all ones, 1 = inverse
    frequency ("balanced"). An absent class (count 0) gets the weight of a class seen once."""
    counts_t = torch.tensor(counts, dtype=torch.float32).clamp(min=1.0)
    return (counts_t.sum() / (len(counts) * counts_t)) ** power


def loss_function(task: Task, label_smoothing: float, class_weight_power: float = 0.0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy (BCE for multi-label); class_weight_power > 0 weights each class by class_weights."""
    if task.multi_label:
        return nn.BCEWithLogitsLoss()
    weight = None
    if class_weight_power:
        if task.class_counts is None:
            raise ValueError(f"{task.name}: class_weight_power needs the task's class_counts")
        weight = class_weights(task.class_counts, class_weight_power)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)


@torch.no_grad()
def predict(model: nn.Module, batches: Iterator[Batch]) -> tuple[np.ndarray, np.ndarray]:
    """Logits and targets of every validation batch."""
    model.eval()
    logits, targets = [], []
    for inputs, target in batches:
        logits.append(model(*inputs))
        targets.append(target)
    return torch.cat(logits).numpy(), torch.cat(targets).numpy()


def evaluate(task: Task, batch_size: int) -> dict:
    logits, targets = predict(task.model, task.val_batches(batch_size))
    if task.metrics is not None:
        return task.metrics(logits, targets)
    if task.multi_label:
        return multilabel_metrics(targets, 1 / (1 + np.exp(-logits)), task.classes)
    return classification_metrics(targets, logits.argmax(1), task.classes)


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint keeps: everything, or only the trained part of a partly frozen model."""
    return model.trained_state_dict() if hasattr(model, "trained_state_dict") else model.state_dict()


def parameter_groups(model: nn.Module, hp: dict) -> list[dict]:
    """Trainable parameters; the head gets hp["head_lr"] when set (a pretrained encoder fine-tunes slower)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if "head_lr" not in hp:
        return [{"params": [p for _, p in named], "lr": hp["lr"]}]
    head = [p for n, p in named if n.startswith("head.")]
    rest = [p for n, p in named if not n.startswith("head.")]
    return [{"params": rest, "lr": hp["lr"]}, {"params": head, "lr": hp["head_lr"]}]


def fit(task: Task, hp: dict, run_dir: Path, *, seed: int, resume: bool = False, stop_after: int | None = None) -> dict:
    """Trains task.model in place; returns the best epoch's checkpoint (also saved as run_dir/best.pt).

    stop_after: end after that epoch of the schedule (a time-boxed session); --resume continues it.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    model = task.model
    steps_per_epoch = math.ceil(task.n_train / hp["batch_size"])
    optimizer = torch.optim.AdamW(parameter_groups(model, hp), weight_decay=hp["weight_decay"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=max(1, hp["epochs"] * steps_per_epoch), pct_start=0.15
    )
    criterion = task.criterion(hp) if task.criterion else loss_function(task, hp.get("label_smoothing", 0.0), hp.get("class_weight_power", 0.0))
    state = {"epoch": 0, "best": None, "history": []}
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    if resume and last_path.exists():
        saved = torch.load(last_path, weights_only=False)
        model.load_state_dict(saved["model"], strict=False)
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        state = saved["state"]
        print(f"{task.name}: resuming after epoch {state['epoch']} from {last_path}")

    last_epoch = min(hp["epochs"], stop_after or hp["epochs"])
    for epoch in range(state["epoch"] + 1, last_epoch + 1):
        model.train()
        # The data order, augmentation and dropout of an epoch depend only on (seed, epoch): a resumed
        # run trains exactly as an uninterrupted one.
        torch.manual_seed(seed * 1000 + epoch)
        generator = torch.Generator().manual_seed(seed * 1000 + epoch)
        bar = tqdm(task.train_batches(generator, hp["batch_size"]), total=steps_per_epoch, desc=f"{task.name} {epoch}/{hp['epochs']}", unit="batch")
        total, seen = 0.0, 0
        for inputs, target in bar:
            outputs = model.training_outputs(*inputs) if hasattr(model, "training_outputs") else [model(*inputs)]
            loss = sum(criterion(output, target) for output in outputs) / len(outputs)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            if schedule.last_epoch + 1 < schedule.total_steps:
                schedule.step()
            total, seen = total + loss.item() * len(target), seen + len(target)
            bar.set_postfix(loss=f"{total / seen:.3f}")
        metrics = evaluate(task, hp["batch_size"])
        record = {"epoch": epoch, "train_loss": total / max(seen, 1), **{k: metrics[k] for k in ("accuracy", "macro_f1", "weighted_f1", "mean_weighted_macro_f1", "wacc")}}
        state["history"].append(record)
        print(f"{task.name} epoch {epoch}: train loss {record['train_loss']:.4f}, validation " + format_metrics("", metrics).strip(": "))
        if state["best"] is None or metrics[task.select_by] > state["best"]["metrics"].get(task.select_by, -math.inf):
            state["best"] = {"epoch": epoch, "metrics": metrics}
            torch.save({"model": trained_state(model), "epoch": epoch, "metrics": metrics}, best_path)
        state["epoch"] = epoch
        torch.save({"model": trained_state(model), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "state": state}, last_path)
        (run_dir / "history.json").write_text(json.dumps(state["history"], indent=1) + "\n")

    best = torch.load(best_path, weights_only=False)
    model.load_state_dict(best["model"], strict=False)
    print(f"{task.name}: best epoch {best['epoch']} by validation {task.select_by} {best['metrics'][task.select_by]:.4f}")
    return best


def fit_steps(model: nn.Module, optimiser: torch.optim.Optimizer, steps: int, evaluate_every: int,
              batch_loss: Callable[[], torch.Tensor], validate: Callable[[], dict], name: str,
              start: dict | None = None) -> dict:
    """`steps` optimiser steps on `batch_loss()` (the model in training mode), validated every
    `evaluate_every` steps and at the last; the weights of the best validation accuracy are kept and
    put back (`start`: the metrics of the weights as they came, which a step must beat; step 0).
    The loop of the models trained on composed data (the group model, end-to-end fine-tuning)."""
    best = {"metrics": start or {"accuracy": -1.0}, "step": 0}
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for step in range(1, steps + 1):
        model.train()
        loss = batch_loss()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % evaluate_every == 0 or step == steps:
            metrics = validate()
            print(f"{name}: step {step}, loss {loss.item():.3f}, validation accuracy {metrics['accuracy']:.3f}, "
                  f"macro-F1 {metrics['macro_f1']:.3f}", flush=True)
            if metrics["accuracy"] > best["metrics"]["accuracy"]:
                best = {"metrics": metrics, "step": step}
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return best
