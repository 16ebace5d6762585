"""Classification metrics: accuracy, F1 (macro, weighted, per class) and the paper's weighted accuracy."""

from __future__ import annotations

import numpy as np

# The single-label metrics and the confusion plot live in the client package (fv2es-client --evaluate
# uses them; the client is installed without fv2es_build): re-exported here for the training code.
from fv2es_client.metrics import (  # noqa: F401
    classification_metrics, confusion_matrix, metrics_from_confusion, plot_confusion,
)


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
    """One block of text; metrics over several corpora (a "per_corpus" entry) show each corpus's line."""
    if "per_corpus" in metrics:
        lines = [f"{name}: mean over corpora: accuracy {metrics['accuracy']:.4f}  macro F1 {metrics['macro_f1']:.4f}"]
        lines += ["  " + format_metrics(corpus, m) for corpus, m in metrics["per_corpus"].items()]
        return "\n".join(lines)
    per_class = ", ".join(f"{k} {v:.2f}" for k, v in metrics["per_class_f1"].items())
    most = metrics.get("most_predicted")
    share = f"  most predicted {most['class']} {most['share']:.0%}" if most else ""
    return (
        f"{name}: n={metrics['n']} accuracy {metrics['accuracy']:.4f}  macro F1 {metrics['macro_f1']:.4f}  "
        f"weighted F1 {metrics['weighted_f1']:.4f}  WAcc {metrics['wacc']:.4f}{share}\n    per-class F1: {per_class}"
    )
