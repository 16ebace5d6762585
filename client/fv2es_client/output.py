"""What fv2es-client prints: a table per video, one JSON document, CSV rows, or a timeline plot (PNG);
and, for live streams, the same table rows, JSON lines or CSV rows one segment at a time."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .client import GROUP_LABELS, NO_SPEAKER, Segment, VideoResult, person_name, top

# The fixed CSV columns; one column per label follows, then the error columns, then the people columns
# (added last, so that every earlier column keeps its place).
CSV_COLUMNS = ("video", "start", "end", "emotion", "score", "has_face", "has_speech", "transcript")
CSV_ERROR_COLUMNS = ("error_code", "error_message")
# speaker: the speaking person's id, -1 for unknown or nobody (as the server says);
# people: every person seen in the segment, `id:emotion score`, `;`-separated, ids in order.
CSV_PEOPLE_COLUMNS = ("speaker", "people")
# unsure: 1 where the segment's top score is below the server's `unsure_below` (after the people columns).
CSV_UNSURE_COLUMNS = ("unsure",)
# The group's emotion in the segment and its scores (after the unsure column; empty from a server without them).
CSV_GROUP_COLUMNS = ("group", "group_score", *(f"group_{label}" for label in GROUP_LABELS))
UNSURE_MARK = "?"  # after a score in the table
JSON_DIGITS = 6  # decimals of times and scores in --json
# The web page's colours (fv2es_web/static/app.css), for the plot's lanes.
EMOTION_COLOURS = {
    "anger": "#c0392b", "disgust": "#6b8e23", "fear": "#7d3c98", "happiness": "#e67e22", "neutral": "#7f8c8d",
    "sadness": "#2e6da4", "surprise": "#d4ac0d",
}
GROUP_COLOURS = {"positive": "#27ae60", "neutral": "#95a5a6", "negative": "#8e44ad"}  # app.css too


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


TABLE_HEADER = f"  {'start':>7} {'end':>7}  {'emotion':<10} {'score':>5}  face speech  {'speaker':<9}  {'group':<8}  transcript"


def speaker_text(speaker: int) -> str:
    return "-" if speaker == NO_SPEAKER else person_name(speaker)


def format_row(s: Segment) -> str:
    """One segment as a table row (what fv2es-client --stream prints as each segment arrives); an
    unsure segment's score is followed by UNSURE_MARK."""
    return (f"  {s.start:7.2f} {s.end:7.2f}  {s.emotion:<10} {s.score:5.2f}{UNSURE_MARK if s.unsure else ' '} "
            f"{'yes' if s.has_face else 'no':<4} {'yes' if s.has_speech else 'no':<6}  {speaker_text(s.speaker):<9}  "
            f"{group_text(s.group):<8}  {s.transcript}").rstrip()


def group_text(scores: dict[str, float] | None) -> str:
    """The group's emotion (its top class), or "-" from a server without group outputs."""
    return "-" if scores is None else top(scores)[0]


def format_people(result: VideoResult) -> list[str]:
    """The per-person block: overall emotion and score, seconds seen, segments where speaking."""
    summaries = result.person_summaries()
    if not summaries:
        return []
    lines = ["  people:", f"    {'person':<10} {'emotion':<10} {'score':>5} {'seen':>9}  speaking"]
    for p in summaries:
        count = len(p.speaking_segments)
        speaking = (f"{count} segment{'s' if count != 1 else ''} ({p.speaking_seconds(result.segments):.2f} s)"
                    if count else "-")
        lines.append(f"    {person_name(p.person):<10} {p.emotion:<10} {p.score:5.2f} {p.seconds:7.2f} s  {speaking}")
    return lines


def format_summary(result: VideoResult) -> str:
    """The lines under the rows: overall scores and emotion, the people, the model."""
    ranked = sorted(result.scores.items(), key=lambda kv: -kv[1])
    lines = ["  overall: " + ", ".join(f"{label} {score:.2f}" for label, score in ranked),
             f"  overall emotion: {result.emotion}{' (unsure)' if result.unsure else ''}", *format_group(result),
             *format_people(result),
             f"  model: {result.model_info.get('weights', 'unknown')}"
             + (f", ASR {result.model_info['asr_model']}" if "asr_model" in result.model_info else "")]
    if any(seg.unsure for seg in result.segments):
        lines.insert(0, unsure_note(result.unsure_below))
    return "\n".join(lines)


def format_group(result: VideoResult) -> list[str]:
    """The whole video's group emotion (everyone in view at once), where the server gives it."""
    if result.group is None:
        return []
    ranked = sorted(result.group.items(), key=lambda kv: -kv[1])
    return [f"  group: {top(result.group)[0]} (" + ", ".join(f"{label} {score:.2f}" for label, score in ranked) + ")"]


def unsure_note(threshold: float) -> str:
    return f"  {UNSURE_MARK} unsure: top score below {threshold:.2f}, a guess more likely wrong than right"


def format_result(name: str, result: VideoResult) -> str:
    return "\n".join([name, TABLE_HEADER, *(format_row(s) for s in result.segments), format_summary(result)])


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


def people_cell(segment: Segment) -> str:
    """`0:happiness 0.8100;1:neutral 0.6012`: each person seen in the segment, their top emotion and score."""
    return ";".join(f"{person}:{top(scores)[0]} {top(scores)[1]:.4f}" for person, scores in sorted(segment.people.items()))


class CsvWriter:
    """CSV rows, one per segment; the header (which names the labels) with the first row."""

    def __init__(self, out: TextIO, labels: list[str] | None = None):
        self.writer = csv.writer(out, lineterminator="\n")
        self.labels = labels
        self.started = False

    def header(self, labels: list[str]) -> None:
        if not self.started:
            self.labels, self.started = list(labels), True
            self.writer.writerow([*CSV_COLUMNS, *self.labels, *CSV_ERROR_COLUMNS, *CSV_PEOPLE_COLUMNS, *CSV_UNSURE_COLUMNS,
                                  *CSV_GROUP_COLUMNS])

    def segment(self, video: str, s: Segment) -> None:
        self.header(self.labels if self.labels is not None else list(s.scores))
        self.writer.writerow([
            video, f"{s.start:.3f}", f"{s.end:.3f}", s.emotion, f"{s.score:.4f}", int(s.has_face),
            int(s.has_speech), s.transcript, *[f"{s.scores.get(label, float('nan')):.4f}" for label in self.labels],
            "", "", s.speaker, people_cell(s), int(s.unsure), *group_cells(s.group),
        ])

    def error(self, video: str, code: str, message: str) -> None:
        """A failed video: one row with only `video` and the error columns."""
        self.header(self.labels or [])
        self.writer.writerow([video, *[""] * (len(CSV_COLUMNS) - 1 + len(self.labels)), code, message,
                              *[""] * (len(CSV_PEOPLE_COLUMNS) + len(CSV_UNSURE_COLUMNS) + len(CSV_GROUP_COLUMNS))])


def group_cells(scores: dict[str, float] | None) -> list[str]:
    """CSV_GROUP_COLUMNS of a segment (empty without group scores)."""
    if scores is None:
        return [""] * len(CSV_GROUP_COLUMNS)
    emotion, score = top(scores)
    return [emotion, f"{score:.4f}", *(f"{scores[label]:.4f}" for label in GROUP_LABELS)]


def write_csv(outcomes: list[Outcome], out: TextIO) -> None:
    """One row per segment; a failed video gets one row with only `video` and the error columns."""
    writer = CsvWriter(out, next((o.result.labels for o in outcomes if o.ok), []))
    writer.header(writer.labels)
    for o in outcomes:
        if not o.ok:
            writer.error(o.video, o.error_code, o.error_message)
            continue
        for s in o.result.segments:
            writer.segment(o.video, s)


def emotion_colour(label: str, labels: list[str]):
    """The web page's colour of an emotion; another label set gets the tab10 colours in label order."""
    if label in EMOTION_COLOURS:
        return EMOTION_COLOURS[label]
    import matplotlib  # noqa: PLC0415

    return matplotlib.colormaps["tab10"](labels.index(label) % 10 if label in labels else 0)


SCORES_HEIGHT = 3.2  # inches per video: the scores panel
LANE_HEIGHT = 0.32  # inches per lane (the video's, then one per person)
LANES_MARGIN = 0.55  # inches around the lanes panel


def plot_timelines(outcomes: list[Outcome], path: str | Path) -> int:
    """Draws each analysed video's per-segment scores over time (unsure segments on grey), one panel per video, and under it,
    when the video has people, one lane for the video and one per person, each segment coloured by
    the emotion (hatched where the person is the speaker); returns the panel count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [o for o in outcomes if o.ok and o.result.segments]
    if not done:
        return 0
    heights = []
    for outcome in done:
        heights.append(SCORES_HEIGHT)
        lanes = lane_count(outcome.result)
        if lanes > 1:
            heights.append(LANES_MARGIN + LANE_HEIGHT * lanes)
    fig = plt.figure(figsize=(10, sum(heights)))
    grid = fig.add_gridspec(len(heights), 1, height_ratios=heights)
    row = 0
    last = None
    for outcome in done:
        result = outcome.result
        ax = fig.add_subplot(grid[row, 0])
        row += 1
        edges = [s.start for s in result.segments] + [result.segments[-1].end]
        for label in result.labels:
            values = [s.scores[label] for s in result.segments]
            ax.stairs(values, edges, baseline=None, label=f"{label} {result.scores[label]:.2f}", linewidth=1.5,
                      color=emotion_colour(label, result.labels))
        unsure = [s for s in result.segments if s.unsure]
        for i, s in enumerate(unsure):  # grey behind the segments that are guesses
            ax.axvspan(s.start, s.end, color="0.85", zorder=0, label="unsure" if i == 0 else None)
        ax.set_title(f"{Path(outcome.video).name}: overall {result.emotion} ({result.score:.2f}"
                     f"{', unsure' if result.unsure else ''})", fontsize=10)
        ax.set_xlim(edges[0], edges[-1])
        ax.set_ylim(0, 1)
        ax.set_ylabel("score")
        ax.grid(alpha=0.3)
        ax.legend(title="overall", fontsize=8, title_fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
        last = ax
        people = result.person_summaries()
        if lane_count(result) > 1:
            lanes = fig.add_subplot(grid[row, 0], sharex=ax)
            row += 1
            draw_lanes(lanes, result, people)
            ax.tick_params(labelbottom=False)
            last = lanes
    last.set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return len(done)


def has_group(result: VideoResult) -> bool:
    return any(s.group is not None for s in result.segments)


def lane_count(result: VideoResult) -> int:
    """Lanes under a video's scores: the video's, the group's (where the server gives it), one per person."""
    return 1 + has_group(result) + len(result.person_summaries())


def draw_lanes(ax, result: VideoResult, people) -> None:
    """The video's lane (top), the group's (coloured by its valence), then one lane per person: a bar
    per segment the person is seen in, coloured by their emotion there (opacity: the score); hatched
    where they are the speaker."""
    from matplotlib.patches import Patch  # noqa: PLC0415

    group = has_group(result)
    names = ["video", *(["group"] if group else []), *(person_name(p.person) for p in people)]
    shown = set()
    for s in result.segments:
        ax.broken_barh([(s.start, s.duration)], (-0.4, 0.8), facecolors=emotion_colour(s.emotion, result.labels),
                       alpha=0.45 + 0.55 * s.score, edgecolor="white", linewidth=0.5)
        shown.add(s.emotion)
        if group and s.group is not None:
            valence, score = top(s.group)
            ax.broken_barh([(s.start, s.duration)], (0.6, 0.8), facecolors=GROUP_COLOURS[valence],
                           alpha=0.45 + 0.55 * score, edgecolor="white", linewidth=0.5)
    for lane, p in enumerate(people, start=1 + group):
        for s in result.segments:
            speaking = s.speaker == p.person
            scores = s.people.get(p.person)
            if scores is None and not speaking:
                continue
            if scores is None:  # the speaker without a row of their own: outlined only
                ax.broken_barh([(s.start, s.duration)], (lane - 0.4, 0.8), facecolors="none", edgecolor="black",
                               hatch="////", linewidth=0.8)
                continue
            emotion, score = top(scores)
            shown.add(emotion)
            ax.broken_barh([(s.start, s.duration)], (lane - 0.4, 0.8), facecolors=emotion_colour(emotion, result.labels),
                           alpha=0.45 + 0.55 * score, edgecolor="black" if speaking else "white",
                           hatch="////" if speaking else None, linewidth=0.8 if speaking else 0.5)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_ylim(len(names) - 0.5, -0.5)  # the video on top
    ax.grid(axis="x", alpha=0.3)
    handles = [Patch(facecolor=emotion_colour(label, result.labels), label=label) for label in result.labels if label in shown]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="////", label="speaking"))
    if group:
        handles += [Patch(facecolor=GROUP_COLOURS[label], label=f"group {label}") for label in GROUP_LABELS]
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), ncol=1 + len(handles) // 8)
