"""fv2es-client --evaluate LABELS.csv: measure a running server on your own labelled videos.

Every video the labels file names is sent to the server (as `fv2es-client VIDEO` would send it,
--concurrency at a time); the command prints accuracy, macro F1, per-class F1, the confusion matrix
and the share of the most predicted emotion, for the videos (one label per video against the video's
overall emotion) and, where the file labels spans of time, for the segments. `--plot FILE.png` draws
the confusion matrices; `--json` prints the numbers, and every prediction, as one JSON document.

The labels file is CSV with a header row naming its columns (other columns are ignored):

    video,label                     one label per video
    clips/interview.mp4,happy
    clips/argument.mp4,anger

    video,start,end,label           labelled spans of time (seconds), and per-video labels
    clips/interview.mp4,,,happiness         start and end empty: the whole video's label
    clips/interview.mp4,0,12.5,neutral      a span: its segments are compared with it
    clips/interview.mp4,12.5,30,happiness

A relative video path is relative to the labels file's folder. Labels are compared case-insensitively
and must be among the server's labels (the shipped model's: anger, disgust, fear, happiness, neutral,
sadness, surprise); the aliases angry, disgusted, fearful, afraid, happy, sad, surprised and calm
(calm counts as neutral, as RAVDESS's calm is closest to it) are accepted. Any other label is refused
(exit 2) before a video is sent. A video has at most one whole-video label; its spans must not
overlap.

Per segment: a predicted segment is compared with the labelled span that covers more than half of it
(its emotion against the span's label); segments no span covers that much are not counted, and a span
that covers no segment that much is counted as `spans without a segment`.

Macro F1 is the mean F1 over the classes that occur among the labels. A video that fails (no such
file, not a video, refused by the server) is counted and listed with its error and is left out of the
numbers; the exit status is then 1 (0 when every video was analysed, 2 for a usage error).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .client import VideoResult
from .metrics import confusion_matrix, metrics_from_confusion, plot_confusions
from .output import Outcome, rounded

# What the shipped model answers (its LABELS output): the labels a file may use before any video is
# sent; the server's own LABELS are checked again on its first answer.
SHIPPED_LABELS = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
ALIASES = {
    "angry": "anger", "disgusted": "disgust", "fearful": "fear", "afraid": "fear", "happy": "happiness",
    "sad": "sadness", "surprised": "surprise", "calm": "neutral",
}
REQUIRED_COLUMNS = ("video", "label")
SPAN_COLUMNS = ("start", "end")
METRIC_KEYS = ("n", "accuracy", "macro_f1", "weighted_f1", "per_class_f1", "classes", "confusion")


class LabelsError(ValueError):
    """A usage error in the labels file (or a label the server does not have)."""


@dataclass
class Span:
    start: float
    end: float
    label: str


@dataclass
class LabelledVideo:
    name: str  # as the labels file writes it
    path: str  # what is sent: resolved against the labels file's folder
    label: str | None = None  # the whole video's label
    spans: list[Span] = field(default_factory=list)


def allowed_text(allowed: tuple[str, ...] | list[str]) -> str:
    aliases = ", ".join(f"{alias}={label}" for alias, label in ALIASES.items() if label in allowed)
    return f"{', '.join(allowed)} (aliases: {aliases})" if aliases else ", ".join(allowed)


def canonical_label(text: str, allowed: tuple[str, ...] | list[str]) -> str:
    """`Happy ` -> `happiness`; LabelsError for a label that is not one of `allowed` nor an alias of one."""
    key = text.strip().lower()
    if not key:
        raise LabelsError(f"no label: the labels are {allowed_text(allowed)}")
    label = ALIASES.get(key, key) if key not in allowed else key
    if label not in allowed:
        raise LabelsError(f"unknown label {text.strip()!r}: the labels are {allowed_text(allowed)}")
    return label


def seconds(text: str, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise LabelsError(f"{column} {text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise LabelsError(f"{column} {text!r} must be 0 or more seconds")
    return value


def read_labels(path: str | Path, allowed: tuple[str, ...] = SHIPPED_LABELS) -> list[LabelledVideo]:
    """The labels file's videos in the order of their first row; LabelsError (with the line) for any
    usage error: no such file, a missing column, an unknown label, a bad or overlapping span."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise LabelsError(f"cannot read the labels file {path}: {exc.strerror or exc}") from None
    rows = csv.reader(text.splitlines())
    header = [name.strip().lower() for name in next(rows, [])]
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise LabelsError(f"{path}: the header row must name the columns video,label (and optionally start,end); "
                          f"missing: {', '.join(missing)}")
    has_spans = [name in header for name in SPAN_COLUMNS]
    if any(has_spans) and not all(has_spans):
        raise LabelsError(f"{path}: give both start and end columns, or neither")
    column = {name: header.index(name) for name in (*REQUIRED_COLUMNS, *SPAN_COLUMNS) if name in header}
    videos: dict[str, LabelledVideo] = {}
    for line, row in enumerate(rows, start=2):
        cells = {name: (row[i].strip() if i < len(row) else "") for name, i in column.items()}
        if not any(row) or cells["video"].startswith("#"):
            continue  # blank lines and comments
        try:
            add_row(videos, cells, path.parent, allowed)
        except LabelsError as exc:
            raise LabelsError(f"{path}, line {line}: {exc}") from None
    if not videos:
        raise LabelsError(f"{path}: no labelled video")
    return list(videos.values())


def add_row(videos: dict[str, LabelledVideo], cells: dict[str, str], folder: Path, allowed: tuple[str, ...]) -> None:
    if not cells["video"]:
        raise LabelsError("no video")
    label = canonical_label(cells["label"], allowed)
    video = videos.setdefault(cells["video"], LabelledVideo(cells["video"], str(folder / cells["video"])))
    start, end = cells.get("start", ""), cells.get("end", "")
    if not start and not end:
        if video.label is not None:
            raise LabelsError(f"{video.name} already has the label {video.label}: one label per video")
        video.label = label
        return
    if not (start and end):
        raise LabelsError("a span needs both start and end (both empty: the whole video's label)")
    span = Span(seconds(start, "start"), seconds(end, "end"), label)
    if span.end <= span.start:
        raise LabelsError(f"the span {start}-{end} ends before it starts")
    for other in video.spans:
        if span.start < other.end and other.start < span.end:
            raise LabelsError(f"the span {start}-{end} overlaps {other.start:g}-{other.end:g} of {video.name}")
    video.spans.append(span)


def covering_span(spans: list[Span], start: float, end: float) -> Span | None:
    """The span that covers more than half of the segment [start, end), if any (spans do not overlap,
    so at most one does)."""
    for span in spans:
        if min(end, span.end) - max(start, span.start) > (end - start) / 2:
            return span
    return None


def summary(truth: list[str], predicted: list[str], classes: list[str]) -> dict:
    """The metrics of (truth, predicted) label pairs, and the most predicted class's share."""
    index = {label: i for i, label in enumerate(classes)}
    matrix = confusion_matrix(np.array([index[t] for t in truth], np.int64),
                              np.array([index[p] for p in predicted], np.int64), len(classes))
    metrics = metrics_from_confusion(matrix, tuple(classes))
    out = {key: metrics[key] for key in METRIC_KEYS}
    out["true_count"] = dict(zip(classes, matrix.sum(1).tolist()))
    out["predicted_count"] = dict(zip(classes, matrix.sum(0).tolist()))
    most = int(matrix.sum(0).argmax())
    out["most_predicted"] = {"label": classes[most], "share": float(matrix.sum(0)[most] / max(matrix.sum(), 1))}
    return out


def evaluate(videos: list[LabelledVideo], outcomes: list[Outcome], labels_file: str | Path = "") -> dict:
    """The report (JSON-shaped) of a run: `outcomes[i]` is `videos[i]` analysed. LabelsError when the
    server's labels lack one of the file's."""
    results: list[VideoResult | None] = [o.result for o in outcomes]
    classes = next((r.labels for r in results if r is not None), list(SHIPPED_LABELS))
    unknown = sorted({label for v in videos for label in [v.label, *(s.label for s in v.spans)]
                      if label is not None and label not in classes})
    if unknown:
        raise LabelsError(f"the server's labels are {', '.join(classes)}: not {', '.join(unknown)}")
    predictions, video_pairs, segment_pairs = [], [], []
    spans = spans_missed = spans_without_segment = 0
    for video, result in zip(videos, results):
        spans += len(video.spans)
        if result is None:
            spans_missed += len(video.spans)
            continue
        entry = {"video": video.name, "label": video.label, "emotion": result.emotion, "segments": []}
        if video.label is not None:
            video_pairs.append((video.label, result.emotion))
        matched = set()
        for segment in result.segments:
            span = covering_span(video.spans, segment.start, segment.end)
            if span is not None:
                matched.add(id(span))
                segment_pairs.append((span.label, segment.emotion))
                entry["segments"].append({"start": segment.start, "end": segment.end, "label": span.label,
                                          "emotion": segment.emotion})
        spans_without_segment += sum(id(span) not in matched for span in video.spans)
        predictions.append(entry)
    failed = [{"video": v.name, "code": o.error_code, "message": o.error_message}
              for v, o in zip(videos, outcomes) if not o.ok]
    report = {
        "labels_file": str(labels_file),
        "classes": list(classes),
        "videos": {"total": len(videos), "analysed": len(videos) - len(failed), "failed": len(failed)},
        "failed": failed,
        "overall": summary(*zip(*video_pairs), classes) if video_pairs else None,
        "segments": summary(*zip(*segment_pairs), classes) if segment_pairs else None,
        "predictions": predictions,
    }
    if spans:
        report["spans"] = {"total": spans, "of_failed_videos": spans_missed, "without_a_segment": spans_without_segment}
    return rounded(report)


def format_metrics_table(title: str, m: dict) -> list[str]:
    classes = m["classes"]
    width = max(9, *(len(c) for c in classes))
    most = m["most_predicted"]
    lines = [f"{title}: n={m['n']}",
             f"  accuracy {m['accuracy']:.3f}   macro F1 {m['macro_f1']:.3f}   weighted F1 {m['weighted_f1']:.3f}   "
             f"most predicted: {most['label']} ({100 * most['share']:.1f}%)",
             f"  {'class':<{width}} {'F1':>5} {'true':>5} {'predicted':>9}"]
    for c in classes:
        true, predicted = m["true_count"][c], m["predicted_count"][c]
        f1 = f"{m['per_class_f1'][c]:5.2f}" if true or predicted else f"{'-':>5}"
        lines.append(f"  {c:<{width}} {f1} {true:5d} {predicted:9d}")
    lines.append("  confusion (rows: true label, columns: predicted emotion)")
    lines.append(f"  {'':<{width}}" + "".join(f" {c[:width]:>{width}}" for c in classes))
    for c, row in zip(classes, m["confusion"]):
        lines.append(f"  {c:<{width}}" + "".join(f" {count:>{width}d}" for count in row))
    return lines


def format_report(report: dict) -> str:
    """The readable tables of a report."""
    v = report["videos"]
    lines = [f"{report['labels_file']}: {v['total']} video{'s' if v['total'] != 1 else ''}, {v['analysed']} analysed, "
             f"{v['failed']} failed"]
    if report["overall"] is not None:
        lines += format_metrics_table("per video (label vs the video's overall emotion)", report["overall"])
    if "spans" in report:
        s = report["spans"]
        note = f"{s['total']} labelled spans, {s['without_a_segment']} without a segment, {s['of_failed_videos']} of failed videos"
        if report["segments"] is not None:
            lines += format_metrics_table(f"per segment (span label vs the segment's emotion; {note})", report["segments"])
        else:
            lines.append(f"per segment: no segment compared ({note})")
    if report["failed"]:
        lines.append(f"failed videos, not in the numbers ({len(report['failed'])}):")
        lines += [f"  {f['video']}: error [{f['code']}]: {f['message']}" for f in report["failed"]]
    return "\n".join(lines)


def plot_report(report: dict, path: str | Path) -> int:
    """The confusion matrices (per video, per segment) side by side in a PNG; returns how many."""
    panels = [(report[key], title) for key, title in (("overall", "per video"), ("segments", "per segment"))
              if report[key] is not None]
    if panels:
        plot_confusions(panels, path)
    return len(panels)
