"""What fv2es-client prints: a table per video, one JSON document, CSV rows, or a timeline plot (PNG)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .client import VideoResult

# The fixed CSV columns; one column per label follows, then the error columns.
CSV_COLUMNS = ("video", "start", "end", "emotion", "score", "has_face", "has_speech", "transcript")
CSV_ERROR_COLUMNS = ("error_code", "error_message")
JSON_DIGITS = 6  # decimals of times and scores in --json


@dataclass
class Outcome:
    """One video of a run: its result, or the error (code, message) that stopped it."""

    video: str
    seconds: float
    result: VideoResult | None = None
    error_code: str | None = None
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        return self.result is not None


def format_result(name: str, result: VideoResult) -> str:
    lines = [f"{name}", f"  {'start':>7} {'end':>7}  {'emotion':<10} {'score':>5}  face speech  transcript"]
    for s in result.segments:
        lines.append(
            f"  {s.start:7.2f} {s.end:7.2f}  {s.emotion:<10} {s.score:5.2f}  "
            f"{'yes' if s.has_face else 'no':<4} {'yes' if s.has_speech else 'no':<6}  {s.transcript}"
        )
    ranked = sorted(result.scores.items(), key=lambda kv: -kv[1])
    lines.append("  overall: " + ", ".join(f"{label} {score:.2f}" for label, score in ranked))
    lines.append(f"  overall emotion: {result.emotion}")
    lines.append(f"  model: {result.model_info.get('weights', 'unknown')}")
    return "\n".join(lines)


def format_outcome(outcome: Outcome) -> str:
    """The table for a result (with its time), or the one-line error for a failure."""
    if outcome.ok:
        return format_result(outcome.video, outcome.result) + f"\n  ({outcome.seconds:.2f} s end to end)"
    return f"{outcome.video}: error [{outcome.error_code}]: {outcome.error_message}"


def rounded(value, digits: int = JSON_DIGITS):
    """Floats rounded (the server's FP32 values print as 0.5899999737739563 otherwise), recursively."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    return value


def outcome_to_dict(outcome: Outcome) -> dict:
    head = {"video": outcome.video, "ok": outcome.ok, "seconds": round(outcome.seconds, 3)}
    if outcome.ok:
        return {**head, **rounded(outcome.result.to_dict())}
    return {**head, "error": {"code": outcome.error_code, "message": outcome.error_message}}


def json_document(outcomes: list[Outcome], server: dict) -> dict:
    """The --json document: the server, one entry per video in the order given, a summary."""
    failed = sum(not o.ok for o in outcomes)
    return {
        "server": server,
        "results": [outcome_to_dict(o) for o in outcomes],
        "summary": {"videos": len(outcomes), "ok": len(outcomes) - failed, "failed": failed},
    }


def write_csv(outcomes: list[Outcome], out: TextIO) -> None:
    """One row per segment; a failed video gets one row with only `video` and the error columns."""
    labels = next((o.result.labels for o in outcomes if o.ok), [])
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS, *labels, *CSV_ERROR_COLUMNS])
    for o in outcomes:
        if not o.ok:
            writer.writerow([o.video, *[""] * (len(CSV_COLUMNS) - 1 + len(labels)), o.error_code, o.error_message])
            continue
        for s in o.result.segments:
            writer.writerow([
                o.video, f"{s.start:.3f}", f"{s.end:.3f}", s.emotion, f"{s.score:.4f}", int(s.has_face),
                int(s.has_speech), s.transcript, *[f"{s.scores[label]:.4f}" for label in labels], "", "",
            ])


def plot_timelines(outcomes: list[Outcome], path: str | Path) -> int:
    """Draws each analysed video's per-segment scores over time, one panel per video; returns the panel count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [o for o in outcomes if o.ok and o.result.segments]
    if not done:
        return 0
    fig, axes = plt.subplots(len(done), 1, figsize=(10, 3.2 * len(done)), squeeze=False)
    for ax, outcome in zip(axes[:, 0], done):
        result = outcome.result
        edges = [s.start for s in result.segments] + [result.segments[-1].end]
        for label in result.labels:
            values = [s.scores[label] for s in result.segments]
            ax.stairs(values, edges, baseline=None, label=f"{label} {result.scores[label]:.2f}", linewidth=1.5)
        ax.set_title(f"{Path(outcome.video).name}: overall {result.emotion} ({result.score:.2f})", fontsize=10)
        ax.set_xlim(edges[0], edges[-1])
        ax.set_ylim(0, 1)
        ax.set_ylabel("score")
        ax.grid(alpha=0.3)
        ax.legend(title="overall", fontsize=8, title_fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return len(done)
