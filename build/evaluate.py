"""Evaluates the trained weights: prints every metric of MODEL_CARD.md and writes it there.

    fv2es-evaluate                 # validation metrics, export check, RepVGG speed
    fv2es-evaluate --write-card    # ... and rewrite MODEL_CARD.md's results section

Branch metrics are on each corpus's validation split (RAVDESS actors 17-20, 8 classes; FER2013
PublicTest; MELD dev); the audio branch also on the held-out speakers of EmoDB and TurEV-DB, for
both audio inputs, and, trained with one speech corpus left out (`fv2es-train loco`), on that whole
corpus: the cross-corpus check. Fused metrics and the calibration error on composed clips of the
held-out half (build/training/fusion_fit.py). Only validation clips are encoded (the held-out
corpora's clips alone, which training has cached), and every number names the CPU it ran on.
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
from . import settings
from fv2es.models.visual import reparameterise
from .training.calibration import ECE_BINS, plot_reliability, reliability
from .training.fusion_fit import all_validation_outputs, evaluate_fusion, fit_fusion
from .training import data
from .training.loop import predict
from .training.speech import (
    SPEECH_TRAINING_CORPORA, clip_logits, corpus_metrics, corpus_predictions, held_out_corpus_metrics, parts_metrics,
    validation_parts,
)
from .train import LOCO_DIR
from .training.metrics import classification_metrics, format_metrics, plot_confusion
from .training.tasks import visual_task
from .training.weights import load_branch, load_weights, weights_path

from .export import export_difference, trained_models
from .machine import cpu_description

# The targets of issue 23: (what, metric, threshold) per branch on its validation split.
TARGETS = {
    "visual": [("visual, FER2013 PublicTest accuracy", "accuracy", 0.70)],
    "text": [("text, MELD dev weighted F1", "weighted_f1", 0.62), ("text, MELD dev macro F1", "macro_f1", 0.48)],
}
# Audio: accuracy on each corpus's held-out speakers (in the classes it has), and with the corpus held out.
HELD_OUT_SPEAKERS_TARGET = {"ravdess": 0.72, "emodb": 0.65, "turev": 0.65}
LOCO_TARGET = 0.45
LOCO_MAX_SHARE = 0.40  # no class above this share of the predictions on a held-out corpus
VALIDATION_DATA = {"audio": "RAVDESS actors 17-20 (8 classes)", "visual": "FER2013 PublicTest", "text": "MELD dev"}
NEUTRAL_WORDS_TARGET = 0.85
ECE_TARGET = 0.05
FERPLUS_TARGET = 0.84  # visual, FER2013 PublicTest with FER+ majority labels
FERPLUS_MIN_AGREEMENT = 0.5
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


def repvgg_speeds(visual_encoder: torch.nn.Module, runs: int = 40) -> dict[str, dict]:
    """As served (each face and its mirror image: 128 images for 64 faces) and with each face once,
    on every core (the Whisper model loaded before can leave torch with one thread)."""
    torch.set_num_threads(os.cpu_count() or 1)
    served = visual_encoder.mirror_average
    results = {}
    for name, mirror in (("as served (mirror-averaged)", served), ("each face once", False)):
        visual_encoder.mirror_average = mirror
        results[name] = repvgg_speed(visual_encoder, runs=runs)
    visual_encoder.mirror_average = served
    return results


def visual_without_mirror_average(args: argparse.Namespace) -> dict:
    """The visual branch's validation metrics when each face is seen once, not averaged with its mirror image."""
    task = visual_task(args.data, args.quick)
    task.model = load_branch("visual", args.weights)
    task.model.encoder.mirror_average = False
    logits, targets = predict(task.model, task.val_batches(64))
    return classification_metrics(targets, logits.argmax(1), task.classes)


def encoder_precision(args: argparse.Namespace) -> dict[str, dict]:
    """What CTranslate2's int8 encoder (the server's, on CPU; its output depends on the instruction set)
    changes against float32: the served audio branch on each corpus's held-out speakers from states of
    each precision, and the share of clips whose prediction differs."""
    branch = load_branch("audio", args.weights)
    result = {}
    logits = {}
    for compute_type in ("int8", "float32"):
        parts = validation_parts(args.data, args.quick, compute_type=compute_type)
        logits[compute_type] = [clip_logits(branch, [p.rows(i) for i in range(len(p.split))]) for p in parts]
        for p, corpus_logits in zip(parts, logits[compute_type]):
            result.setdefault(p.corpus, {})[compute_type] = corpus_metrics(corpus_logits, p.split.targets.numpy(), p.classes)
    for p, a, b in zip(parts, logits["int8"], logits["float32"]):
        changed = float((corpus_predictions(a, p.classes) != corpus_predictions(b, p.classes)).mean())
        result[p.corpus]["predictions_changed"] = changed
        print(f"audio, {p.corpus} held-out speakers: accuracy int8 {result[p.corpus]['int8']['accuracy']:.4f}, "
              f"float32 {result[p.corpus]['float32']['accuracy']:.4f}; {changed:.1%} of predictions differ")
    return result


def held_out_speakers(args: argparse.Namespace, audio_input: str) -> dict[str, dict]:
    """The audio branch trained on `audio_input`, on each speech corpus's held-out speakers, in the
    classes that corpus has (speech.corpus_metrics: calm counted as neutral where a corpus has none)."""
    with audio_input_set(audio_input):
        branch = load_branch("audio", args.weights)
        return {p.corpus: parts_metrics(branch, [p]) for p in validation_parts(args.data, args.quick)}


def leave_one_corpus_out(args: argparse.Namespace) -> dict[str, dict]:
    """Each audio branch of `fv2es-train loco` on the whole corpus it never saw (speech.held_out_corpus_metrics)."""
    results = {}
    loco_dir = args.weights.parent / "loco" if args.quick else LOCO_DIR
    for corpus in SPEECH_TRAINING_CORPORA:
        if not weights_path(loco_dir / corpus, "audio").exists():
            print(f"leave-one-corpus-out: no {weights_path(loco_dir / corpus, 'audio')} (fv2es-train loco): skipped")
            continue
        branch = load_branch("audio", loco_dir / corpus)
        results[corpus] = held_out_corpus_metrics(branch, corpus, args.data, args.quick)
        results[corpus]["trained_on"] = load_weights(weights_path(loco_dir / corpus, "audio")).get("data")
        print(format_metrics(f"audio, {corpus} held out (trained on the others)", results[corpus]))
    return results


@contextmanager
def audio_input_set(audio_input: str):
    """Within the block, config.AUDIO_INPUT is `audio_input` (the models and the weights file follow it)."""
    saved, config.AUDIO_INPUT = config.AUDIO_INPUT, audio_input
    try:
        yield
    finally:
        config.AUDIO_INPUT = saved


def calibration(outputs: dict, served_fusion: torch.nn.Module, args: argparse.Namespace) -> dict:
    """Expected calibration error on the evaluation half, before and after temperature scaling: each
    branch at temperature 1 and at its fitted one; fused, a fusion fitted on uncalibrated branches
    against the served one. Also writes the reliability diagrams."""
    result = {}
    for i, branch in enumerate(settings.BRANCHES):
        out = outputs[branch]
        held = ~out.fit_half
        logits, targets = out.logits[torch.from_numpy(held)], out.targets[held]
        temperature = float(served_fusion.branch_temperature[i])
        result[branch] = {"temperature": temperature, "before": reliability(torch.softmax(logits, 1).numpy(), targets),
                          "after": reliability(torch.softmax(logits / temperature, 1).numpy(), targets)}
    uncalibrated = evaluate_fusion(fit_fusion(outputs, settings.TRAINING["fusion"], settings.TRAIN_SEED, calibrate=False), outputs, settings.TRAIN_SEED)
    calibrated = evaluate_fusion(served_fusion, outputs, settings.TRAIN_SEED)
    for name in ("fused", "fused, neutral words"):
        result[name] = {"before": uncalibrated[name]["calibration"], "after": calibrated[name]["calibration"]}
    for name, r in result.items():
        print(f"calibration, {name}: expected calibration error {r['before']['ece']:.3f} -> {r['after']['ece']:.3f}"
              + (f" (temperature {r['temperature']:.2f})" if "temperature" in r else ""))
    plot_reliability({name: {"before": r["before"], "after": r["after"]} for name, r in result.items()}, args.figures / "reliability.png")
    return result


def ferplus_labels(args: argparse.Namespace, visual: "BranchOutputs") -> dict:
    """The visual branch on FER2013 PublicTest with FER+ majority labels, where the FER+ rows are the
    images of validation.npz: checked by how often FER+'s majority agrees with FER2013's own label
    (published: about 0.7; rows of other images agree only by chance)."""
    if args.quick:
        return {"skipped": "quick run"}
    soft, majority = data.ferplus_targets(data.load_ferplus_votes(args.data, validation=True))
    if len(majority) != len(visual.targets):
        return {"aligned": False, "why": f"{len(majority)} FER+ PublicTest rows for {len(visual.targets)} images"}
    usable = majority >= 0
    agreement = float((majority[usable] == visual.targets[usable]).mean())
    result = {"aligned": agreement >= FERPLUS_MIN_AGREEMENT, "agreement_with_fer2013": agreement}
    if result["aligned"]:
        result["metrics"] = classification_metrics(majority[usable], visual.logits[torch.from_numpy(usable)].argmax(1).numpy(), visual.classes)
        print(format_metrics("visual branch, FER2013 PublicTest with FER+ majority labels", result["metrics"]))
    else:
        print(f"FER+: the majority label agrees with FER2013's on {agreement:.1%} of PublicTest: its rows are not "
              "validation.npz's images (left out)")
    return result


def audio_inputs(args: argparse.Namespace) -> dict[str, dict]:
    """Both audio inputs side by side (where their weights exist), on every corpus's held-out speakers."""
    out = {}
    for audio_input in config.AUDIO_INPUTS:
        with audio_input_set(audio_input):
            if not weights_path(args.weights, "audio").exists():
                continue
        out[audio_input] = held_out_speakers(args, audio_input)
        for corpus, metrics in out[audio_input].items():
            print(format_metrics(f"audio input {audio_input}, {corpus} held-out speakers", metrics))
    return out


def evaluate(args: argparse.Namespace) -> dict:
    results: dict = {"branches": {}, "targets": {}, "date": time.strftime("%Y-%m-%d"), "cpu": cpu_description()}
    outputs = all_validation_outputs(args.weights, args.data, args.quick)
    for branch, out in outputs.items():
        if branch == "audio":  # RAVDESS's validation actors; the other corpora below
            ravdess = out.corpus == "ravdess"
            metrics = classification_metrics(out.targets[ravdess], out.logits[torch.from_numpy(ravdess)].argmax(1).numpy(), out.classes)
        else:
            metrics = classification_metrics(out.targets, out.logits.argmax(1).numpy(), out.classes)
        results["branches"][branch] = metrics
        print(format_metrics(f"{branch} branch, validation", metrics))
        for what, key, threshold in TARGETS.get(branch, []):
            results["targets"][what] = {"value": metrics[key], "target": threshold, "met": metrics[key] >= threshold}
        plot_confusion(metrics, args.figures / f"{branch}.png", f"{branch} branch: {VALIDATION_DATA[branch]}")

    results["ferplus"] = ferplus_labels(args, outputs["visual"])
    if "metrics" in results["ferplus"]:
        value = results["ferplus"]["metrics"]["accuracy"]
        results["targets"]["visual, FER2013 PublicTest with FER+ majority labels accuracy"] = {"value": value, "target": FERPLUS_TARGET, "met": value >= FERPLUS_TARGET}
    results["audio_inputs"] = audio_inputs(args)
    for corpus, metrics in results["audio_inputs"][config.AUDIO_INPUT].items():
        results["targets"][f"audio, {corpus} held-out speakers accuracy ({len(metrics['classes'])} classes)"] = {
            "value": metrics["accuracy"], "target": HELD_OUT_SPEAKERS_TARGET[corpus], "met": metrics["accuracy"] >= HELD_OUT_SPEAKERS_TARGET[corpus]}
    results["leave_one_corpus_out"] = leave_one_corpus_out(args)
    if config.AUDIO_INPUT == "whisper":
        results["encoder_precision"] = encoder_precision(args)
    for corpus, metrics in results["leave_one_corpus_out"].items():
        share = metrics["most_predicted"]["share"]
        results["targets"][f"audio, {corpus} held out, accuracy ({len(metrics['classes'])} classes)"] = {
            "value": metrics["accuracy"], "target": LOCO_TARGET, "met": metrics["accuracy"] >= LOCO_TARGET}
        results["targets"][f"audio, {corpus} held out: share of the most predicted class (at most)"] = {
            "value": share, "target": LOCO_MAX_SHARE, "met": share <= LOCO_MAX_SHARE, "at_most": True}

    results["visual_without_mirror_average"] = visual_without_mirror_average(args)
    print(format_metrics("visual branch without mirror averaging", results["visual_without_mirror_average"]))

    served = trained_models(args.weights)
    fusion = served["fusion"]
    results["fusion"] = evaluate_fusion(fusion, outputs, settings.TRAIN_SEED)
    results["calibration"] = calibration(outputs, fusion, args)
    ece = results["calibration"]["fused"]["after"]["ece"]
    results["targets"]["fused scores, expected calibration error (at most)"] = {"value": ece, "target": ECE_TARGET, "met": ece <= ECE_TARGET, "at_most": True}
    for name, metrics in results["fusion"].items():
        print(format_metrics(f"composed clips, {name}", metrics))
    plot_confusion(results["fusion"]["fused"], args.figures / "fused.png", "fused: composed validation clips")
    neutral = results["fusion"]["fused, neutral words"]["accuracy"]
    results["targets"]["fused, composed clips with neutral words"] = {"value": neutral, "target": NEUTRAL_WORDS_TARGET, "met": neutral >= NEUTRAL_WORDS_TARGET}
    results["modality_weights"] = dict(zip(settings.BRANCHES, torch.softmax(fusion.modality_weights.detach(), 0).tolist()))

    results["export"] = {}
    for name, module in served.items():
        results["export"][name] = export_difference(name, module, models.to_torchscript(name, module))
        print(f"export {name}: TorchScript vs eager max abs difference {results['export'][name]:.1e}")
    # --quick: a few runs only (the timing code runs; 40 runs of 6 forward passes take 40 s on 2 cores)
    results["repvgg_speed"] = repvgg_speeds(served["visual_encoder"], runs=3 if args.quick else 40)
    for mode, speed in results["repvgg_speed"].items():
        print(f"RepVGG, batch of {speed['batch']} faces, {mode}, median of {speed['runs']}: "
              + ", ".join(f"{k} {v:.1f} ms" for k, v in speed["median_ms"].items()) + f"; deploy form {speed['speedup']:.2f}x faster")
    speedup = results["repvgg_speed"]["as served (mirror-averaged)"]["speedup"]
    results["targets"]["RepVGG deploy form speed-up, 64 faces on CPU"] = {"value": speedup, "target": 1.3, "met": speedup >= 1.3}
    results["weights"] = {part: {k: load_weights(weights_path(args.weights, part)).get(k) for k in ("command", "commit", "epoch", "minutes")}
                          for part in settings.WEIGHT_PARTS}
    for what, t in results["targets"].items():
        print(f"target {what} {'<=' if t.get('at_most') else '>='} {t['target']}: {t['value']:.4f} {'met' if t['met'] else 'MISSED'}")
    return results


def asr_model_records(weights_dir: Path) -> str:
    """Each ASR model's weights side by side, from what their records kept when they were trained
    (validation metrics on the same held-out data; nothing is evaluated again), as a Markdown table."""
    lines = ["| ASR model | audio branch, held-out speakers: RAVDESS / EmoDB / TurEV | fused, composed clips | "
             "group model, composed scenes | sparse face selection, composed segments (every face) | audio branch trained by |",
             "|---|---|---|---|---|---|"]
    served = config.ASR_MODEL
    for name in config.ASR_MODELS:
        with settings.asr_model_set(name):
            records = {part: load_weights(weights_path(weights_dir, part)) for part in settings.ASR_PARTS}
        speakers = " / ".join(f"{records['audio']['metrics']['per_corpus'][c]['accuracy']:.3f}" for c in SPEECH_TRAINING_CORPORA)
        sparse = records[settings.SPARSE_PART]["comparison"]["mixed"]
        lines.append(f"| {name}{' (served)' if name == served else ''} | {speakers} | {records['fusion']['metrics']['accuracy']:.3f} | "
                     f"{records[settings.GROUP_PART]['metrics']['accuracy']:.3f} | {sparse['sparse']['accuracy']:.3f} "
                     f"({sparse['every face']['accuracy']:.3f}) | `{records['audio']['command']}` |")
    return "\n".join(lines)


def card_section(results: dict) -> str:
    """The results section of MODEL_CARD.md, generated from one evaluate.py run."""
    lines = [MARK_START, "", f"Written by `fv2es-evaluate --write-card` on {results['date']}, on {results['cpu']} (every number",
             "below; the Whisper encoder's int8 output, and so the audio numbers, depend on the CPU: see the precision table).", ""]
    lines += ["| branch / check | validation data | accuracy | macro F1 | weighted F1 | WAcc |", "|---|---|---|---|---|---|"]
    rows = [(f"{b} branch", VALIDATION_DATA[b], m) for b, m in results["branches"].items()]
    rows += [(f"composed clips, {name}", "held-out half, 7 labels", m) for name, m in results["fusion"].items()]
    for name, where, m in rows:
        lines.append(f"| {name} | {where} (n={m['n']}) | {m['accuracy']:.3f} | {m['macro_f1']:.3f} | {m['weighted_f1']:.3f} | {m['wacc']:.3f} |")
    lines += ["", "Per-class F1:", ""]
    for name, _, m in rows:
        lines.append(f"- {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in m["per_class_f1"].items()))
    lines += ["", "Audio branch on each speech corpus's held-out speakers, in the classes that corpus has (the most",
              "probable of them; calm counted as neutral where a corpus has no calm, as the fusion maps it), by",
              "input (the served one is `AUDIO_INPUT` in config.py; the Mel input is trained on RAVDESS only):", "",
              "| audio input | corpus, held-out speakers | classes | accuracy | macro F1 | most predicted class |", "|---|---|---|---|---|---|"]
    for audio_input, corpora in results["audio_inputs"].items():
        for corpus, m in corpora.items():
            speakers = ", ".join(str(s) for s in data.SPEECH_CORPORA[corpus].validation_speakers)
            lines.append(f"| {audio_input}{' (served)' if audio_input == config.AUDIO_INPUT else ''} | {corpus} {speakers} (n={m['n']}) | "
                         f"{len(m['classes'])} | {m['accuracy']:.3f} | {m['macro_f1']:.3f} | {m['most_predicted']['class']} {m['most_predicted']['share']:.0%} |")
    lines += [""] + [f"- {corpus}, {audio_input} input, per-class F1: " + ", ".join(f"{c} {v:.2f}" for c, v in m["per_class_f1"].items())
                     for audio_input, corpora in results["audio_inputs"].items() for corpus, m in corpora.items()]
    if results["leave_one_corpus_out"]:
        lines += ["", "Leave one corpus out: the audio branch trained (`fv2es-train loco`) on the other two corpora, tested on every",
                  "clip of the one it never heard, in the classes it shares with them:", "",
                  "| held-out corpus | classes | accuracy | macro F1 | most predicted class | per-class F1 |", "|---|---|---|---|---|---|"]
        for corpus, m in results["leave_one_corpus_out"].items():
            lines.append(f"| {corpus} (n={m['n']}) | {len(m['classes'])} | {m['accuracy']:.3f} | {m['macro_f1']:.3f} | "
                         f"{m['most_predicted']['class']} {m['most_predicted']['share']:.0%} | "
                         + ", ".join(f"{c} {v:.2f}" for c, v in m["per_class_f1"].items()) + " |")
    lines += ["", f"Calibration: expected calibration error of the top score ({ECE_BINS} bins) on the evaluation half, before",
              "and after temperature scaling (each branch's temperature fitted on the fitting half; fused: the fusion fitted",
              "on the calibrated branches against one fitted on the raw ones). [Reliability diagrams](docs/model_card/reliability.png).", "",
              "| scores | temperature | ECE before | ECE after | mean top score after | accuracy |", "|---|---|---|---|---|---|"]
    for name, r in results["calibration"].items():
        temperature = f"{r['temperature']:.2f}" if "temperature" in r else "-"
        lines.append(f"| {name} (n={r['after']['n']}) | {temperature} | {r['before']['ece']:.3f} | {r['after']['ece']:.3f} | "
                     f"{r['after']['mean_confidence']:.3f} | {r['after']['accuracy']:.3f} |")
    if results.get("encoder_precision"):
        lines += ["", "The Whisper encoder's precision: the server runs CTranslate2's int8 encoder on CPU, whose output depends on",
                  "the CPU's instruction set (another CPU gave 0.692 where this card once said 0.700). The served audio branch",
                  "on the held-out speakers from int8 and from float32 encoder states:", "",
                  "| corpus | accuracy, int8 states | accuracy, float32 states | predictions that differ |", "|---|---|---|---|"]
        for corpus, r in results["encoder_precision"].items():
            lines.append(f"| {corpus} (n={r['int8']['n']}) | {r['int8']['accuracy']:.3f} | {r['float32']['accuracy']:.3f} | {r['predictions_changed']:.1%} |")
    ferplus = results["ferplus"]
    if "metrics" in ferplus:
        m = ferplus["metrics"]
        lines += ["", f"Visual branch on FER2013 PublicTest with FER+ majority labels (n={m['n']}, rows without a usable majority "
                  f"left out): accuracy {m['accuracy']:.3f}, macro F1 {m['macro_f1']:.3f}."]
    elif "agreement_with_fer2013" in ferplus:
        lines += ["", f"FER+ majority labels: not measured. FER+'s majority label agrees with FER2013's own label on "
                  f"{ferplus['agreement_with_fer2013']:.1%} of PublicTest, which is chance: `fer2013/validation.npz` holds the "
                  "images grouped by class, not in the order of `ferplus/fer2013new.csv`, so the votes cannot be matched to images."]
    lines += ["", "Targets of issue 23:", ""]
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
    parser.add_argument("--data", type=Path, default=ROOT / settings.DATA_DIR)
    parser.add_argument("--weights", type=Path, default=ROOT / settings.WEIGHTS_DIR)
    parser.add_argument("--figures", type=Path, help="where the confusion matrices go (default: docs/model_card)")
    parser.add_argument("--json", type=Path, help="also write all results as JSON here")
    parser.add_argument("--quick", action="store_true", help="a few validation examples (smoke test)")
    parser.add_argument("--write-card", action="store_true", help="rewrite MODEL_CARD.md's results section")
    parser.add_argument("--asr-model", choices=sorted(config.ASR_MODELS), default=config.ASR_MODEL,
                        help="evaluate the weights trained on this ASR model's states (default: the served %(default)s)")
    parser.add_argument("--asr-records", action="store_true", help="only print each ASR model's weights side by side, "
                        "from the validation metrics their records kept (evaluates nothing)")
    args = parser.parse_args()
    if args.quick and args.write_card:
        parser.error("--quick numbers do not go into the model card")
    if args.write_card and args.asr_model != config.ASR_MODEL:
        parser.error("the model card's results are the served ASR model's")
    config.use_asr_model(args.asr_model)
    if args.asr_records:
        print(asr_model_records(args.weights))
        return
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
