"""Classification metrics: accuracy, F1 (macro, weighted, per class) and the paper's weighted accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """[true class, predicted class] counts."""
    matrix = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(matrix, (np.asarray(truth), np.asarray(predicted)), 1)
    return matrix


def metrics_from_confusion(matrix: np.ndarray, classes: tuple[str, ...]) -> dict:
    """Accuracy, macro / weighted F1, per-class F1 and WAcc from a confusion matrix.

    WAcc (FV2ES / FE2E) per class, one against the rest: (TP * N / P + TN) / (2N), with P positives
    and N negatives; averaged over classes. It equals the mean of sensitivity and specificity.
    """
    total = matrix.sum()
    tp = np.diag(matrix).astype(float)
    positives = matrix.sum(1).astype(float)  # true count per class
    predicted = matrix.sum(0).astype(float)
    negatives = total - positives
    tn = total - positives - predicted + tp
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, positives, out=np.zeros_like(tp), where=positives > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    wacc = np.divide(tp * negatives / np.maximum(positives, 1) + tn, 2 * negatives, out=np.zeros_like(tp), where=negatives > 0)
    present = positives > 0
    macro_f1 = float(f1[present].mean()) if present.any() else 0.0
    weighted_f1 = float((f1 * positives).sum() / max(total, 1))
    return {
        "n": int(total),
        "accuracy": float(tp.sum() / max(total, 1)),
        "macro_f1": macro_f1,
        "weighted_f1": weighted_f1,
        # Their mean: an epoch-selection metric that rewards the rare classes as well as the frequent ones.
        "mean_weighted_macro_f1": (weighted_f1 + macro_f1) / 2,
        "wacc": float(wacc[present].mean()) if present.any() else 0.0,
        "per_class_f1": {name: round(float(v), 4) for name, v in zip(classes, f1)},
        "confusion": matrix.tolist(),
        "classes": list(classes),
    }


def classification_metrics(truth: np.ndarray, predicted: np.ndarray, classes: tuple[str, ...]) -> dict:
    return metrics_from_confusion(confusion_matrix(truth, predicted, len(classes)), classes)


def multilabel_metrics(targets: np.ndarray, scores: np.ndarray, classes: tuple[str, ...], threshold: float = 0.5) -> dict:
    """Per-label binary metrics averaged over labels (the reference's MOSEI evaluation)."""
    predicted = scores >= threshold
    truth = targets >= 0.5
    per_label = [
        metrics_from_confusion(confusion_matrix(truth[:, j].astype(int), predicted[:, j].astype(int), 2), ("no", "yes"))
        for j in range(len(classes))
    ]
    f1 = [m["per_class_f1"]["yes"] for m in per_label]
    macro_f1 = float(np.mean(f1))
    weighted_f1 = float(np.average(f1, weights=truth.sum(0) + 1e-9))
    return {
        "n": int(len(targets)),
        "accuracy": float(np.mean([m["accuracy"] for m in per_label])),
        "macro_f1": macro_f1,
        "weighted_f1": weighted_f1,
        "mean_weighted_macro_f1": (weighted_f1 + macro_f1) / 2,
        "wacc": float(np.mean([m["wacc"] for m in per_label])),
        "per_class_f1": dict(zip(classes, f1)),
        "classes": list(classes),
    }


def format_metrics(name: str, metrics: dict) -> str:
    per_class = ", ".join(f"{k} {v:.2f}" for k, v in metrics["per_class_f1"].items())
    return (
        f"{name}: n={metrics['n']} accuracy {metrics['accuracy']:.4f}  macro F1 {metrics['macro_f1']:.4f}  "
        f"weighted F1 {metrics['weighted_f1']:.4f}  WAcc {metrics['wacc']:.4f}\n    per-class F1: {per_class}"
    )


def plot_confusion(metrics: dict, path: Path, title: str) -> None:
    """Row-normalised confusion matrix image, with the counts written in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(metrics["confusion"], float)
    classes = metrics["classes"]
    rates = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(classes), 0.8 + 0.7 * len(classes)))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=8, color="white" if rates[i, j] > 0.5 else "black")
    ax.set_title(f"{title}\naccuracy {metrics['accuracy']:.3f}, macro F1 {metrics['macro_f1']:.3f}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
