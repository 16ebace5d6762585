"""fv2es-client --evaluate LABELS.csv against a real tritonserver: the numbers it prints are the ones
computed here from what the server answers for the same files through the Python API (the test does
not assume the model is right), failures are counted, bad labels files are refused before sending."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import SAMPLE, make_video

from fv2es.tritonserver import free_port
from fv2es_client import cli
from fv2es_client.evaluate import SHIPPED_LABELS, LabelsError, read_labels

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIMEOUT = ("--timeout", "120", "--no-progress")
# The clips and their labels (what the test chooses; aliases and odd case on purpose).
LABELS = {"talking_head.mp4": ("happy", "happiness"), "silent_face.mp4": ("Neutral", "neutral"),
          "blank_speech.mp4": ("sad", "sadness")}


@pytest.fixture(scope="module")
def clips(tmp_path_factory, sample_speech):
    folder = tmp_path_factory.mktemp("labelled")
    shutil.copy(SAMPLE, folder / "talking_head.mp4")
    (folder / "silent_face.mp4").write_bytes(make_video(None))  # 4 s of the face, no speech
    (folder / "blank_speech.mp4").write_bytes(make_video(sample_speech, faces=False))  # speech, no face
    (folder / "broken.mp4").write_text("not a video\n")
    return folder


@pytest.fixture(scope="module")
def reference(client, clips):
    """What the server answers for each clip through the Python API."""
    return {name: client.analyze(clips / name) for name in LABELS}


def spans_of(result) -> list[tuple[float, float, str]]:
    """Two labelled spans over the sample: the first half 'angry', the rest 'neutral'."""
    end = result.segments[-1].end
    return [(0.0, end / 2, "anger"), (end / 2, end + 1.0, "neutral")]


def write_labels(path, rows: list[str], header: str = "video,start,end,label") -> str:
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


def evaluate(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main([*TIMEOUT, *args])
    out, err = capsys.readouterr()
    return code, out, err


def expected(pairs: list[tuple[str, str]]) -> dict:
    """Accuracy, per-class F1, macro F1 (over the classes among the labels), confusion and the most
    predicted share, by hand."""
    classes = list(SHIPPED_LABELS)
    confusion = [[sum(t == a and p == b for t, p in pairs) for b in classes] for a in classes]
    f1 = {}
    for c in classes:
        tp = sum(t == p == c for t, p in pairs)
        true, predicted = sum(t == c for t, _ in pairs), sum(p == c for _, p in pairs)
        f1[c] = 2 * tp / (true + predicted) if true + predicted else 0.0
    present = {t for t, _ in pairs}
    counts = [sum(p == c for _, p in pairs) for c in classes]
    return {
        "n": len(pairs), "accuracy": sum(t == p for t, p in pairs) / len(pairs), "per_class_f1": f1,
        "macro_f1": sum(f1[c] for c in present) / len(present), "confusion": confusion,
        "most_predicted": {"label": classes[counts.index(max(counts))], "share": max(counts) / len(pairs)},
    }


def check(reported: dict, want: dict) -> None:
    assert reported["n"] == want["n"] == sum(map(sum, reported["confusion"]))
    assert reported["confusion"] == want["confusion"]
    assert reported["accuracy"] == pytest.approx(want["accuracy"], abs=1e-6)
    assert reported["macro_f1"] == pytest.approx(want["macro_f1"], abs=1e-6)
    assert reported["per_class_f1"] == pytest.approx(want["per_class_f1"], abs=1e-4)
    assert reported["most_predicted"]["share"] == pytest.approx(want["most_predicted"]["share"], abs=1e-6)
    assert reported["most_predicted"]["label"] == want["most_predicted"]["label"]


def test_numbers_per_video_and_per_segment_are_the_servers_predictions(server, clips, reference, capsys):
    sample = reference["talking_head.mp4"]
    rows = [f"{name},,,{label}" for name, (label, _) in LABELS.items()]
    rows += [f"talking_head.mp4,{start},{end},{'angry' if label == 'anger' else label}"
             for start, end, label in spans_of(sample)]
    labels = write_labels(clips / "labels.csv", rows)
    code, out, err = evaluate(capsys, "--url", server.grpc_url, "--evaluate", labels, "--json", "--concurrency", "2")
    assert code == cli.EXIT_OK, err
    report = json.loads(out)
    assert report["videos"] == {"total": 3, "analysed": 3, "failed": 0}
    assert report["failed"] == []
    assert report["classes"] == list(SHIPPED_LABELS)
    # Per video: each label against the overall emotion the server gives the same file.
    assert [(p["video"], p["label"], p["emotion"]) for p in report["predictions"]] == [
        (name, canonical, reference[name].emotion) for name, (_, canonical) in LABELS.items()]
    check(report["overall"], expected([(canonical, reference[name].emotion) for name, (_, canonical) in LABELS.items()]))
    # Per segment: every segment of the sample is more than half inside one of the two spans.
    spans = spans_of(sample)
    pairs = []
    for s in sample.segments:
        covering = [label for start, end, label in spans if min(s.end, end) - max(s.start, start) > (s.end - s.start) / 2]
        pairs += [(covering[0], s.emotion)] if covering else []
    assert len(pairs) >= 2
    check(report["segments"], expected(pairs))
    assert [(p["label"], p["emotion"]) for p in report["predictions"][0]["segments"]] == pairs
    assert report["spans"] == {"total": 2, "of_failed_videos": 0, "without_a_segment": 0}


def test_failed_videos_are_counted_and_listed_with_exit_1(server, clips, reference, capsys, tmp_path):
    labels = write_labels(clips / "with_failures.csv", [
        "talking_head.mp4,happiness", "broken.mp4,fear", "missing.mp4,anger", "silent_face.mp4,neutral"],
        header="video,label")
    png = tmp_path / "confusion.png"
    code, out, err = evaluate(capsys, "--url", server.grpc_url, "--evaluate", labels, "--plot", str(png))
    assert code == cli.EXIT_FAILED, err
    assert "4 videos, 2 analysed, 2 failed" in out
    assert "failed videos, not in the numbers (2):" in out
    assert "broken.mp4: error [INVALID_ARGUMENT]" in out
    assert "missing.mp4: error [FILE_NOT_FOUND]" in out
    assert "2 of 4 videos failed" in err
    # The numbers are those of the two analysed videos.
    want = expected([("happiness", reference["talking_head.mp4"].emotion), ("neutral", reference["silent_face.mp4"].emotion)])
    assert "per video (label vs the video's overall emotion): n=2" in out
    assert f"accuracy {want['accuracy']:.3f}   macro F1 {want['macro_f1']:.3f}" in out
    assert f"most predicted: {want['most_predicted']['label']} ({100 * want['most_predicted']['share']:.1f}%)" in out
    assert "per segment" not in out  # no spans in this file
    assert png.read_bytes().startswith(PNG_SIGNATURE) and png.stat().st_size > 5000
    assert f"1 confusion matrix written to {png}" in err


def test_unknown_label_is_refused_before_anything_is_sent(tmp_path, capsys):
    (tmp_path / "a.mp4").write_bytes(b"")
    labels = write_labels(tmp_path / "labels.csv", ["a.mp4,,,happy", "a.mp4,2,3,bored"])
    nobody = f"127.0.0.1:{free_port()}"  # no server: a request would fail with UNAVAILABLE, not a usage error
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--url", nobody, "--evaluate", labels])
    assert stopped.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "line 3: unknown label 'bored': the labels are anger, disgust, fear, happiness, neutral, sadness, surprise" in err
    assert "happy=happiness" in err and "calm=neutral" in err
    assert "no FV2ES server" not in err


@pytest.mark.parametrize("rows, header, message", [
    (["a.mp4,happy"], "video,emotion", "missing: label"),
    (["a.mp4,1,happy"], "video,start,label", "give both start and end columns"),
    (["a.mp4,,,happy", "a.mp4,,,sad"], "video,start,end,label", "line 3: a.mp4 already has the label happiness"),
    (["a.mp4,0,5,happy", "a.mp4,4,8,sad"], "video,start,end,label", "line 3: the span 4-8 overlaps 0-5 of a.mp4"),
    (["a.mp4,5,2,happy"], "video,start,end,label", "ends before it starts"),
    (["a.mp4,x,2,happy"], "video,start,end,label", "start 'x' is not a number"),
    (["a.mp4,1,,happy"], "video,start,end,label", "a span needs both start and end"),
    (["a.mp4,"], "video,label", "line 2: no label"),
    ([], "video,label", "no labelled video"),
])
def test_bad_labels_files_are_usage_errors(tmp_path, rows, header, message):
    with pytest.raises(LabelsError, match=message):
        read_labels(write_labels(tmp_path / "labels.csv", rows, header))


def test_labels_file_format(tmp_path):
    labels = write_labels(tmp_path / "labels.csv", [
        "# a comment", "", "clips/a.mp4,,,Happy", "clips/a.mp4,0,2.5,calm", "clips/a.mp4,2.5,9,SURPRISED",
        f"{SAMPLE},,,fearful"], header="Video,Start,End,Label,notes")
    videos = read_labels(labels)
    assert [(v.name, v.path, v.label) for v in videos] == [
        ("clips/a.mp4", str(tmp_path / "clips" / "a.mp4"), "happiness"), (str(SAMPLE), str(SAMPLE), "fear")]
    assert [(s.start, s.end, s.label) for s in videos[0].spans] == [(0.0, 2.5, "neutral"), (2.5, 9.0, "surprise")]


def test_evaluate_excludes_video_files_and_csv(tmp_path, capsys):
    labels = write_labels(tmp_path / "labels.csv", ["a.mp4,happy"], header="video,label")
    for args in (["--evaluate", labels, "b.mp4"], ["--evaluate", labels, "--csv"], ["--evaluate", labels, "--stream", "x"]):
        with pytest.raises(SystemExit) as stopped:
            cli.main(args)
        assert stopped.value.code == cli.EXIT_USAGE, args
