"""Evaluates the trained weights: prints every metric of MODEL_CARD.md and writes it there.

    python build/evaluate.py                 # validation metrics, export check, RepVGG speed
    python build/evaluate.py --write-card    # ... and rewrite MODEL_CARD.md's results section

Branch metrics are on each corpus's validation split (RAVDESS actors 17-20, 8 classes; FER2013
PublicTest; MELD dev); fused metrics on composed clips of the held-out half (build/training/fusion_fit.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python_backend"))
sys.path.insert(0, str(ROOT / "build"))

from fv2es import config, models  # noqa: E402
from fv2es.models.visual import reparameterise  # noqa: E402
from training.fusion_fit import all_validation_outputs, evaluate_fusion  # noqa: E402
from training.loop import predict  # noqa: E402
from training.metrics import classification_metrics, format_metrics, plot_confusion  # noqa: E402
from training.tasks import visual_task  # noqa: E402
from training.weights import load_branch, load_weights, weights_path  # noqa: E402

from export import export_difference, trained_models  # noqa: E402

# The targets: (what, metric, threshold).
TARGETS = {
    "visual": ("FER2013 PublicTest accuracy", "accuracy", 0.68),
    "audio": ("RAVDESS held-out actors accuracy (8 classes)", "accuracy", 0.60),
    "text": ("MELD dev weighted F1", "weighted_f1", 0.55),
}
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
    """As served (each face and its mirror image: 128 images for 64 faces) and with each face once."""
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


def evaluate(args: argparse.Namespace) -> dict:
    results: dict = {"branches": {}, "targets": {}}
    outputs = all_validation_outputs(args.weights, args.data, args.quick)
    for branch, out in outputs.items():
        metrics = classification_metrics(out.targets, out.logits.argmax(1).numpy(), out.classes)
        results["branches"][branch] = metrics
        print(format_metrics(f"{branch} branch, validation", metrics))
        what, key, threshold = TARGETS[branch]
        results["targets"][what] = {"value": metrics[key], "target": threshold, "met": metrics[key] >= threshold}
        plot_confusion(metrics, args.figures / f"{branch}.png", f"{branch} branch: {what.split(' accuracy')[0].split(' weighted')[0]}")

    results["visual_without_mirror_average"] = visual_without_mirror_average(args)
    print(format_metrics("visual branch without mirror averaging", results["visual_without_mirror_average"]))

    served = trained_models(args.weights)
    fusion = served["fusion"]
    results["fusion"] = evaluate_fusion(fusion, outputs, config.TRAIN_SEED)
    for name, metrics in results["fusion"].items():
        print(format_metrics(f"composed clips, {name}", metrics))
    plot_confusion(results["fusion"]["fused"], args.figures / "fused.png", "fused: composed validation clips")
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
        print(f"target {what} >= {t['target']}: {t['value']:.4f} {'met' if t['met'] else 'MISSED'}")
    return results


def card_section(results: dict) -> str:
    """The results section of MODEL_CARD.md, generated from one evaluate.py run."""
    lines = [MARK_START, "", f"Written by `python build/evaluate.py --write-card` on {time.strftime('%Y-%m-%d')}.", ""]
    lines += ["| branch / check | validation data | accuracy | macro F1 | weighted F1 | WAcc |", "|---|---|---|---|---|---|"]
    data = {"audio": "RAVDESS actors 17-20 (8 classes)", "visual": "FER2013 PublicTest", "text": "MELD dev"}
    rows = [(f"{b} branch", data[b], m) for b, m in results["branches"].items()]
    rows += [(f"composed clips, {name}", "held-out half, 7 labels", m) for name, m in results["fusion"].items()]
    for name, where, m in rows:
        lines.append(f"| {name} | {where} (n={m['n']}) | {m['accuracy']:.3f} | {m['macro_f1']:.3f} | {m['weighted_f1']:.3f} | {m['wacc']:.3f} |")
    lines += ["", "Per-class F1:", ""]
    for name, _, m in rows:
        lines.append(f"- {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in m["per_class_f1"].items()))
    lines += ["", "Targets of issue 3:", ""]
    for what, t in results["targets"].items():
        lines.append(f"- {what} >= {t['target']}: **{t['value']:.3f}**, {'met' if t['met'] else 'missed'}")
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
