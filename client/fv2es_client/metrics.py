"""Classification metrics from a confusion matrix: accuracy, F1 (macro, weighted, per class), the
paper's weighted accuracy, and the confusion matrix as a PNG. Only numpy (matplotlib for the PNG):
shared by `fv2es-client --evaluate` and the training code (fv2es_build.training.metrics)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """[true class, predicted class] counts."""
    matrix = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(matrix, (np.asarray(truth, np.int64), np.asarray(predicted, np.int64)), 1)
    return matrix


def metrics_from_confusion(matrix: np.ndarray, classes: tuple[str, ...]) -> dict:
    """Accuracy, macro / weighted F1, per-class F1 and WAcc from a confusion matrix.

    Macro F1 averages the F1 of the classes that occur in the truth (a class never true and never
    predicted has no F1 to average). WAcc (FV2ES / FE2E) per class, one against the rest:
    (TP * N / P + TN) / (2N), with P positives and N negatives; averaged over classes. It equals the
    mean of sensitivity and specificity.
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


def plot_confusions(panels: list[tuple[dict, str]], path: str | Path) -> None:
    """Row-normalised confusion matrices side by side, (metrics, title) each, with the counts written
    in the cells, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(len(metrics["classes"]) for metrics, _ in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=((1.0 + 0.75 * size) * len(panels), 0.8 + 0.7 * size), squeeze=False)
    for ax, (metrics, title) in zip(axes[0], panels):
        matrix = np.asarray(metrics["confusion"], float)
        classes = metrics["classes"]
        rates = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if rates[i, j] > 0.5 else "black")
        ax.set_title(f"{title}\naccuracy {metrics['accuracy']:.3f}, macro F1 {metrics['macro_f1']:.3f}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(metrics: dict, path: str | Path, title: str) -> None:
    """One row-normalised confusion matrix image, with the counts written in the cells."""
    plot_confusions([(metrics, title)], path)
