"""Evaluates the trained weights: prints every metric of MODEL_CARD.md and writes it there.

    fv2es-evaluate                 # validation metrics, export check, RepVGG speed
    fv2es-evaluate --write-card    # ... and rewrite MODEL_CARD.md's results section

Branch metrics are on each corpus's validation split (RAVDESS actors 17-20, 8 classes; FER2013
PublicTest; MELD dev); the audio branch also on EmoDB (German, other speakers and studio, never
trained on: the cross-corpus check), for both audio inputs; fused metrics on composed clips of the
held-out half (build/training/fusion_fit.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from fv2es import config, models
from fv2es.models.visual import reparameterise
from .training.fusion_fit import all_validation_outputs, evaluate_fusion
from .training import data
from .training.loop import predict
from .training.speech import clip_inputs, clip_logits
from .training.metrics import classification_metrics, format_metrics, plot_confusion
from .training.tasks import visual_task
from .training.weights import load_branch, load_weights, weights_path

from .export import export_difference, trained_models

# The targets of issue 11: (what, metric, threshold) per branch on its validation split.
TARGETS = {
    "audio": [("audio, RAVDESS held-out actors accuracy (8 classes)", "accuracy", 0.70)],
    "visual": [("visual, FER2013 PublicTest accuracy", "accuracy", 0.72)],
    "text": [("text, MELD dev weighted F1", "weighted_f1", 0.62), ("text, MELD dev macro F1", "macro_f1", 0.48)],
}
VALIDATION_DATA = {"audio": "RAVDESS actors 17-20 (8 classes)", "visual": "FER2013 PublicTest", "text": "MELD dev"}
EMODB_TARGET = 0.55  # accuracy over the six shared classes
EMODB_MAX_SHARE = 0.35  # no class above this share of the predictions
NEUTRAL_WORDS_TARGET = 0.80
CARD = ROOT / "MODEL_CARD.md"
FIGURES = ROOT / "docs" / "model_card"
MARK_START, MARK_END = "<!-- evaluate.py:start -->", "<!-- evaluate.py:end -->"


def repvgg_speed(visual_encoder: torch.nn.Module, *, batch: int = 64, runs: int = 40) -> dict:
    """Time of one batch of faces: training form (eval mode) vs re-parameterised deploy form, eager and
    TorchScript, interleaved so that machine noise hits all alike; medians, and the median of the
    per-round ratios (steadier than a ratio of medians on a noisy machine)."""
    training_form = visual_encoder.eval()
    deploy_form = reparameterise(training_form)
    scripted = models.to_torchscript("visual_encoder", training_form)
    faces = torch.randn(batch, 1, config.FACE_SIZE, config.FACE_SIZE)
    forms = {"training form": training_form, "deploy form": deploy_form, "deploy form, TorchScript": scripted}
    times: dict[str, list[float]] = {name: [] for name in forms}
    with torch.no_grad():
        for module in forms.values():
            module(faces)  # warm-up
        for _ in range(runs):
            for name, module in forms.items():
                started = time.perf_counter()
                module(faces)
                times[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(t) * 1000 for name, t in times.items()}
    ratios = [a / b for a, b in zip(times["training form"], times["deploy form"])]
    return {"batch": batch, "runs": runs, "threads": torch.get_num_threads(), "median_ms": medians,
            "speedup": statistics.median(ratios)}


def repvgg_speeds(visual_encoder: torch.nn.Module) -> dict[str, dict]:
    """As served (each face and its mirror image: 128 images for 64 faces) and with each face once,
    on every core (the Whisper model loaded before can leave torch with one thread)."""
    torch.set_num_threads(os.cpu_count() or 1)
    served = visual_encoder.mirror_average
    results = {}
    for name, mirror in (("as served (mirror-averaged)", served), ("each face once", False)):
        visual_encoder.mirror_average = mirror
        results[name] = repvgg_speed(visual_encoder)
    visual_encoder.mirror_average = served
    return results


def visual_without_mirror_average(args: argparse.Namespace) -> dict:
    """The visual branch's validation metrics when each face is seen once, not averaged with its mirror image."""
    task = visual_task(args.data, args.quick)
    task.model = load_branch("visual", args.weights)
    task.model.encoder.mirror_average = False
    logits, targets = predict(task.model, task.val_batches(64))
    return classification_metrics(targets, logits.argmax(1), task.classes)


def emodb_metrics(args: argparse.Namespace, audio_input: str) -> dict:
    """The audio branch trained on `audio_input` on EmoDB, over the six classes EmoDB shares with
    RAVDESS: its probabilities mapped as the fusion maps them (calm counts as neutral), the most
    probable of the six classes predicted. Also the share of the most predicted class."""
    split = data.load_emodb(args.data)
    if args.quick:
        split = data.quick_subset(split, config.QUICK_EXAMPLES)
    shared = list(dict.fromkeys(data.EMODB_TO_RAVDESS.values()))
    index = [config.RAVDESS_CLASSES.index(c) for c in shared]
    with audio_input_set(audio_input):
        branch = load_branch("audio", args.weights)
        probabilities = torch.softmax(clip_logits(branch, clip_inputs("emodb", split.inputs)), 1)
    probabilities[:, config.RAVDESS_CLASSES.index("neutral")] += probabilities[:, config.RAVDESS_CLASSES.index("calm")]
    predicted = probabilities[:, index].argmax(1).numpy()
    truth = np.array([index.index(int(t)) for t in split.targets])
    metrics = classification_metrics(truth, predicted, tuple(shared))
    counts = np.bincount(predicted, minlength=len(shared))
    metrics["most_predicted"] = {"class": shared[int(counts.argmax())], "share": float(counts.max() / len(predicted))}
    return metrics


@contextmanager
def audio_input_set(audio_input: str):
    """Within the block, config.AUDIO_INPUT is `audio_input` (the models and the weights file follow it)."""
    saved, config.AUDIO_INPUT = config.AUDIO_INPUT, audio_input
    try:
        yield
    finally:
        config.AUDIO_INPUT = saved


def audio_inputs(args: argparse.Namespace) -> dict[str, dict]:
    """Both audio inputs side by side (where their weights exist): RAVDESS held-out actors and EmoDB."""
    from .training.fusion_fit import validation_outputs  # noqa: PLC0415

    out = {}
    for audio_input in config.AUDIO_INPUTS:
        with audio_input_set(audio_input):
            if not weights_path(args.weights, "audio").exists():
                continue
            val = validation_outputs("audio", args.weights, args.data, args.quick)
        out[audio_input] = {
            "ravdess": classification_metrics(val.targets, val.logits.argmax(1).numpy(), val.classes),
            "emodb": emodb_metrics(args, audio_input),
        }
        print(format_metrics(f"audio input {audio_input}, RAVDESS held-out", out[audio_input]["ravdess"]))
        print(format_metrics(f"audio input {audio_input}, EmoDB 6 classes", out[audio_input]["emodb"]))
    return out


def evaluate(args: argparse.Namespace) -> dict:
    results: dict = {"branches": {}, "targets": {}}
    outputs = all_validation_outputs(args.weights, args.data, args.quick)
    for branch, out in outputs.items():
        metrics = classification_metrics(out.targets, out.logits.argmax(1).numpy(), out.classes)
        results["branches"][branch] = metrics
        print(format_metrics(f"{branch} branch, validation", metrics))
        for what, key, threshold in TARGETS[branch]:
            results["targets"][what] = {"value": metrics[key], "target": threshold, "met": metrics[key] >= threshold}
        plot_confusion(metrics, args.figures / f"{branch}.png", f"{branch} branch: {VALIDATION_DATA[branch]}")

    results["audio_inputs"] = audio_inputs(args)
    emodb = results["audio_inputs"][config.AUDIO_INPUT]["emodb"]
    share = emodb["most_predicted"]["share"]
    results["targets"]["audio, EmoDB speakers, 6 shared classes accuracy (never trained on)"] = {
        "value": emodb["accuracy"], "target": EMODB_TARGET, "met": emodb["accuracy"] >= EMODB_TARGET}
    results["targets"]["audio, EmoDB: share of the most predicted class (at most)"] = {
        "value": share, "target": EMODB_MAX_SHARE, "met": share <= EMODB_MAX_SHARE, "at_most": True}

    results["visual_without_mirror_average"] = visual_without_mirror_average(args)
    print(format_metrics("visual branch without mirror averaging", results["visual_without_mirror_average"]))

    served = trained_models(args.weights)
    fusion = served["fusion"]
    results["fusion"] = evaluate_fusion(fusion, outputs, config.TRAIN_SEED)
    for name, metrics in results["fusion"].items():
        print(format_metrics(f"composed clips, {name}", metrics))
    plot_confusion(results["fusion"]["fused"], args.figures / "fused.png", "fused: composed validation clips")
    neutral = results["fusion"]["fused, neutral words"]["accuracy"]
    results["targets"]["fused, composed clips with neutral words"] = {"value": neutral, "target": NEUTRAL_WORDS_TARGET, "met": neutral >= NEUTRAL_WORDS_TARGET}
    results["modality_weights"] = dict(zip(config.BRANCHES, torch.softmax(fusion.modality_weights.detach(), 0).tolist()))

    results["export"] = {}
    for name, module in served.items():
        results["export"][name] = export_difference(name, module, models.to_torchscript(name, module))
        print(f"export {name}: TorchScript vs eager max abs difference {results['export'][name]:.1e}")
    results["repvgg_speed"] = repvgg_speeds(served["visual_encoder"])
    for mode, speed in results["repvgg_speed"].items():
        print(f"RepVGG, batch of {speed['batch']} faces, {mode}, median of {speed['runs']}: "
              + ", ".join(f"{k} {v:.1f} ms" for k, v in speed["median_ms"].items()) + f"; deploy form {speed['speedup']:.2f}x faster")
    speedup = results["repvgg_speed"]["as served (mirror-averaged)"]["speedup"]
    results["targets"]["RepVGG deploy form speed-up, 64 faces on CPU"] = {"value": speedup, "target": 1.3, "met": speedup >= 1.3}
    results["weights"] = {part: {k: load_weights(weights_path(args.weights, part)).get(k) for k in ("command", "commit", "epoch", "minutes")}
                          for part in config.WEIGHT_PARTS}
    for what, t in results["targets"].items():
        print(f"target {what} {'<=' if t.get('at_most') else '>='} {t['target']}: {t['value']:.4f} {'met' if t['met'] else 'MISSED'}")
    return results


def card_section(results: dict) -> str:
    """The results section of MODEL_CARD.md, generated from one evaluate.py run."""
    lines = [MARK_START, "", f"Written by `fv2es-evaluate --write-card` on {time.strftime('%Y-%m-%d')}.", ""]
    lines += ["| branch / check | validation data | accuracy | macro F1 | weighted F1 | WAcc |", "|---|---|---|---|---|---|"]
    rows = [(f"{b} branch", VALIDATION_DATA[b], m) for b, m in results["branches"].items()]
    rows += [(f"composed clips, {name}", "held-out half, 7 labels", m) for name, m in results["fusion"].items()]
    emodb = results["audio_inputs"][config.AUDIO_INPUT]["emodb"]
    rows.insert(1, ("audio branch, cross-corpus", "EmoDB speakers 03, 08-11 (6 classes, never trained on)", emodb))
    for name, where, m in rows:
        lines.append(f"| {name} | {where} (n={m['n']}) | {m['accuracy']:.3f} | {m['macro_f1']:.3f} | {m['weighted_f1']:.3f} | {m['wacc']:.3f} |")
    lines += ["", "Per-class F1:", ""]
    for name, _, m in rows:
        lines.append(f"- {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in m["per_class_f1"].items()))
    lines += ["", "Audio branch by input (the served one is `AUDIO_INPUT` in config.py); EmoDB: German speakers 03, 08,",
              "09, 10, 11, never trained on, six classes shared with RAVDESS (calm counted as neutral, as the fusion maps it):", "",
              "| audio input | RAVDESS actors 17-20, accuracy (8 classes) | EmoDB accuracy | EmoDB macro F1 | EmoDB most predicted class |",
              "|---|---|---|---|---|"]
    for audio_input, m in results["audio_inputs"].items():
        most = m["emodb"]["most_predicted"]
        lines.append(f"| {audio_input}{' (served)' if audio_input == config.AUDIO_INPUT else ''} | {m['ravdess']['accuracy']:.3f} | "
                     f"{m['emodb']['accuracy']:.3f} | {m['emodb']['macro_f1']:.3f} | {most['class']} {most['share']:.0%} |")
    lines += [""] + [f"- EmoDB per-class F1, {k} input: " + ", ".join(f"{c} {v:.2f}" for c, v in m["emodb"]["per_class_f1"].items())
                     for k, m in results["audio_inputs"].items()]
    lines += ["", "Targets of issue 11:", ""]
    for what, t in results["targets"].items():
        lines.append(f"- {what} {'<=' if t.get('at_most') else '>='} {t['target']}: **{t['value']:.3f}**, {'met' if t['met'] else 'missed'}")
    plain = results["visual_without_mirror_average"]
    lines += ["", f"The visual branch averages each face's features with its mirror image's (`FACE_MIRROR_AVERAGE`); "
              f"without that, FER2013 PublicTest accuracy is {plain['accuracy']:.3f} (macro F1 {plain['macro_f1']:.3f})."]
    weights = ", ".join(f"{k} {v:.2f}" for k, v in results["modality_weights"].items())
    lines += [
        "", f"Fitted modality weights (softmax-normalised): {weights}.", "",
        "Export: TorchScript vs eager, max abs difference on example inputs: "
        + ", ".join(f"{k} {v:.1e}" for k, v in results["export"].items()) + ".", "",
    ]
    for mode, speed in results["repvgg_speed"].items():
        lines += [
            f"RepVGG on CPU ({speed['threads']} threads), batch of {speed['batch']} faces, {mode}, {speed['runs']} rounds: median "
            + ", ".join(f"{k} {v:.1f} ms" for k, v in speed["median_ms"].items())
            + f"; the deploy form is **{speed['speedup']:.2f}x** faster than the training form (median ratio).", "",
        ]
    lines += [
        "Confusion matrices: " + ", ".join(f"[{p}](docs/model_card/{p}.png)" for p in ("audio", "visual", "text", "fused")), "",
        MARK_END,
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / config.DATA_DIR)
    parser.add_argument("--weights", type=Path, default=ROOT / config.WEIGHTS_DIR)
    parser.add_argument("--figures", type=Path, help="where the confusion matrices go (default: docs/model_card)")
    parser.add_argument("--json", type=Path, help="also write all results as JSON here")
    parser.add_argument("--quick", action="store_true", help="a few validation examples (smoke test)")
    parser.add_argument("--write-card", action="store_true", help="rewrite MODEL_CARD.md's results section")
    args = parser.parse_args()
    if args.quick and args.write_card:
        parser.error("--quick numbers do not go into the model card")
    args.figures = args.figures or (ROOT / "build" / "out" / "quick" / "figures" if args.quick else FIGURES)
    results = evaluate(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.write_card:
        card = CARD.read_text()
        start, end = card.index(MARK_START), card.index(MARK_END) + len(MARK_END)
        CARD.write_text(card[:start] + card_section(results) + card[end:])
        print(f"wrote the results into {CARD}")


if __name__ == "__main__":
    main()
