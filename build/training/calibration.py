"""Confidence that means something: temperature scaling (Guo et al. 2017) and the expected
calibration error, with a reliability plot.

A branch's temperature is fitted on the fusion's fitting half of its validation data (the half the
modality weights are fitted on, never the half the card's numbers come from); the fused scores'
sharpness is the fusion's own `log_scale`, fitted on composed clips by the same likelihood.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

ECE_BINS = 15


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor | np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of softmax(logits / T)."""
    logits = torch.as_tensor(logits, dtype=torch.float32)
    targets = torch.as_tensor(targets, dtype=torch.long)
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def reliability(probabilities: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Expected calibration error of the top score (bins of equal width) and the per-bin
    confidence, accuracy and count that a reliability diagram draws."""
    probabilities = np.asarray(probabilities, np.float64)
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == np.asarray(targets)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    mean_confidence = np.bincount(which, confidence, bins) / np.maximum(count, 1)
    accuracy = np.bincount(which, correct.astype(float), bins) / np.maximum(count, 1)
    ece = float((np.abs(accuracy - mean_confidence) * count).sum() / max(len(confidence), 1))
    return {"ece": ece, "n": int(len(confidence)), "mean_confidence": float(confidence.mean()) if len(confidence) else 0.0,
            "accuracy": float(correct.mean()) if len(correct) else 0.0,
            "bins": {"confidence": mean_confidence.tolist(), "accuracy": accuracy.tolist(), "count": count.tolist()}}


def plot_reliability(panels: dict[str, dict[str, dict]], path: str | Path) -> None:
    """One reliability diagram per panel ({title: {curve name: reliability(...)}}) to a PNG."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels.items()):
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        for name, r in curves.items():
            count = np.array(r["bins"]["count"])
            used = count > 0
            ax.plot(np.array(r["bins"]["confidence"])[used], np.array(r["bins"]["accuracy"])[used], marker="o",
                    markersize=3, label=f"{name} (ECE {r['ece']:.3f})")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("top score")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
