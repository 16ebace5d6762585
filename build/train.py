"""Trains the V2EM branches on the corpora in ../shared/data, then fits the fusion weights.

    fv2es-train all              # audio, visual, text, then fusion: the shipped weights
    fv2es-train visual --resume  # one branch; continue an interrupted run
    fv2es-train all --quick      # a few examples, one epoch: a smoke run in seconds
    fv2es-train loco             # the audio branch three more times, each time one speech corpus held
                                 # out (build/out/loco/<corpus>/): build/evaluate.py tests on it
    fv2es-train multimodal --fe2e DIR --dataset iemocap   # the paper's joint setting
    fv2es-train all --asr-model packaged:whisper-base      # the parts that read speech states, for another
                                 # ASR model (weights/whisper-base/; visual and text are shared)

Each branch trains on its own corpora (audio: RAVDESS, EmoDB and TurEV-DB, some speakers of each
held out; visual: FER2013 train, validated on its PublicTest split; text: MELD train, validated on dev) with the preprocessing code the
server runs. The best epoch by validation goes to WEIGHTS_DIR/<branch>.pt; `make build` exports them.
`multimodal` trains all branches and the fusion together on IEMOCAP or CMU-MOSEI in the FE2E layout
(build/training/fe2e.py), in that corpus's label set; set LABEL_SET in config.py to serve the result.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from fv2es import config
from . import settings
from .training import tasks
from .training import data
from .training.speech import SPEECH_TRAINING_CORPORA, audio_branch_task
from .training.loop import fit
from .training.weights import load_trained_state, load_weights, save_weights, weights_path

LOCO_DIR = ROOT / "build" / "out" / "loco"  # leave-one-corpus-out audio branches: LOCO_DIR/<held-out corpus>/


def speech_description(corpora: tuple[str, ...]) -> str:
    return "speech of " + ", ".join(f"{c} (speakers {list(data.SPEECH_CORPORA[c].validation_speakers)} held out)" for c in corpora)


DATA_DESCRIPTION = {
    "audio": speech_description(SPEECH_TRAINING_CORPORA),
    "visual": "FER2013 Training (train), PublicTest (validation)",
    "text": "MELD train (train), dev (validation)",
}


def make_task(branch: str, data_dir: Path, quick: bool, hp: dict, corpora: tuple[str, ...] = SPEECH_TRAINING_CORPORA):
    if branch == "visual":
        return tasks.visual_task(data_dir, quick, augment=hp.get("augment", "basic"))
    if branch == "audio":
        return audio_branch_task(data_dir, quick, corpora)
    return tasks.text_task(data_dir, quick, context=hp.get("context_utterances", 0))


def init_branch(model: torch.nn.Module, branch: str, path: Path) -> None:
    """--init: start from the weights of an existing record (a fine-tuning run), not from scratch."""
    record = load_weights(path)
    try:
        load_trained_state(model, record, branch)
    except ValueError as error:
        raise SystemExit(f"--init {path}: {error}") from None
    print(f"{branch}: initialised from {path} ({record.get('command')}, epoch {record.get('epoch')})")


def train_branch(branch: str, args: argparse.Namespace, corpora: tuple[str, ...] = SPEECH_TRAINING_CORPORA,
                 weights_dir: Path | None = None) -> dict:
    """One branch -> weights_dir (default --weights); the audio branch on `corpora`."""
    weights_dir = weights_dir or args.weights
    key = settings.weight_name(branch)
    if args.init is not None and f"{key}_finetune" in settings.TRAINING:
        key += "_finetune"
    hp = dict(settings.TRAINING[key])
    if args.quick:
        hp["epochs"] = 1
    if args.epochs:
        hp["epochs"] = args.epochs
    if branch == "text" and args.text_context is not None:
        hp["context_utterances"] = args.text_context
    torch.manual_seed(args.seed)
    started = time.time()
    task = make_task(branch, args.data, args.quick, hp, corpora)
    if args.init is not None:
        init_branch(task.model, branch, args.init)
    print(f"{branch}: {task.n_train} training / {task.n_val} validation examples, {hp}")
    run = str(Path(settings.weight_file(branch)).parent / key)  # each ASR model's audio branch has its own checkpoints
    run = run if weights_dir == args.weights else f"{run}-{weights_dir.name}"
    best = fit(task, hp, args.runs / run, seed=args.seed, resume=args.resume, stop_after=args.stop_after)
    minutes = (time.time() - started) / 60
    save_weights(
        weights_path(weights_dir, branch),
        task.model,
        classes=task.classes,
        metrics=best["metrics"],
        epoch=best["epoch"],
        hyperparameters=hp,
        data=(speech_description(corpora) if branch == "audio" else DATA_DESCRIPTION[branch]) + (" (quick: a few examples)" if args.quick else "")
        + (f"; initialised from {args.init} (trained: {load_weights(args.init).get('command')})" if args.init else ""),
        seed=args.seed,
        command="fv2es-train " + " ".join(sys.argv[1:]),
        minutes=round(minutes, 1),
        **({"audio_input": config.AUDIO_INPUT} if branch == "audio" else {}),
        # The served asr model must be this one: its encoder states are the branch's input (build/export.py).
        **({"asr_model": config.ASR_MODEL} if branch == "audio" and config.AUDIO_INPUT == "whisper" else {}),
    )
    print(f"{branch}: saved {weights_path(weights_dir, branch)} after {minutes:.1f} min")
    return best


def train_leave_one_corpus_out(args: argparse.Namespace) -> None:
    """The audio branch trained on all speech corpora but one, for each one: the cross-corpus test
    (build/evaluate.py tests each on its held-out corpus)."""
    out = args.weights.parent / "loco" if args.quick else LOCO_DIR
    for held_out in SPEECH_TRAINING_CORPORA:
        corpora = tuple(c for c in SPEECH_TRAINING_CORPORA if c != held_out)
        print(f"leave-one-corpus-out: training on {', '.join(corpora)}, {held_out} held out")
        train_branch("audio", args, corpora, out / held_out)


def train_multimodal(args: argparse.Namespace) -> dict:
    from .training.multimodal import multimodal_task  # noqa: PLC0415

    if args.fe2e is None:
        raise SystemExit("multimodal training needs --fe2e DIR (the FE2E data folder) and --dataset")
    hp = dict(settings.TRAINING["multimodal"])
    hp["epochs"] = 1 if args.quick else (args.epochs or hp["epochs"])
    torch.manual_seed(args.seed)
    task = multimodal_task(args.fe2e, args.dataset, args.quick)
    print(f"{task.name}: {task.n_train} training / {task.n_val} validation utterances, {hp}")
    best = fit(task, hp, args.runs / task.name, seed=args.seed, resume=args.resume, stop_after=args.stop_after)
    record = {
        "label_set": args.dataset,
        "data": f"{args.dataset} in the FE2E layout at {args.fe2e}: train / valid splits",
        "metrics": best["metrics"],
        "epoch": best["epoch"],
        "hyperparameters": hp,
        "seed": args.seed,
        "command": "fv2es-train " + " ".join(sys.argv[1:]),
    }
    model = task.model
    for branch in settings.BRANCHES:
        save_weights(weights_path(args.weights, branch), getattr(model, branch), classes=task.classes, **record)
    fitted = torch.nn.ParameterDict({"modality_weights": model.fusion.modality_weights, "log_scale": model.fusion.log_scale})
    save_weights(weights_path(args.weights, "fusion"), fitted, **record)
    print(f"{task.name}: saved the branch and fusion weights in {args.weights}")
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("all", "audio", "visual", "text", "fusion", "loco", "group", "sparse", "end_to_end", "multimodal"))
    parser.add_argument("--data", type=Path, default=ROOT / settings.DATA_DIR, help="the corpora (default: %(default)s)")
    parser.add_argument("--runs", type=Path, help="checkpoints, to resume from (default: build/out/runs)")
    parser.add_argument("--weights", type=Path, help=f"where the trained weights go (default: {settings.WEIGHTS_DIR}/, "
                        "the shipped ones; build/out/quick/weights with --quick)")
    parser.add_argument("--quick", action="store_true", help="a few examples and one epoch (smoke test)")
    parser.add_argument("--epochs", type=int, help="override the configured number of epochs")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --runs")
    parser.add_argument("--stop-after", type=int, help="end after this epoch (continue later with --resume)")
    parser.add_argument("--seed", type=int, default=settings.TRAIN_SEED)
    parser.add_argument("--fe2e", type=Path, help="multimodal: the FE2E data folder (IEMOCAP_RAW_PROCESSED, ...)")
    parser.add_argument("--dataset", choices=("iemocap", "mosei"), default="iemocap", help="multimodal: which corpus")
    parser.add_argument("--vgaf", type=Path, help="group: train on group videos in VGAF's layout in this folder "
                        "(Train/, Val/, Train_labels.txt, Val_labels.txt; build/training/vgaf.py) instead of composed scenes")
    parser.add_argument("--text-context", type=int, help="text: pair each utterance with this many before it in its "
                        "dialogue (an experiment: the served text encoder sees one segment's words)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--asr-model", choices=sorted(config.ASR_MODELS), default=config.ASR_MODEL,
                        help="train the parts that read speech states (settings.ASR_PARTS) on this ASR model's: "
                        "they go to its folder of --weights (default: %(default)s)")
    parser.add_argument("--speech-packings", type=int, help="audio: packed variants of each training clip, plain "
                        "and augmented (default: training/speech.py's); 0 encodes each clip once, alone")
    parser.add_argument("--init", type=Path, help="start a branch from the weights in this weights record "
                        "(e.g. weights/visual.pt) instead of from scratch: fine-tuning")
    args = parser.parse_args(argv)
    # The visual and text branches do not read speech states: every ASR model's weights share them.
    other_asr = args.asr_model != config.ASR_MODEL
    if other_asr and args.part not in (*settings.ASR_PARTS, "all", "loco"):
        parser.error(f"{args.part} does not depend on the ASR model: train it without --asr-model")
    config.use_asr_model(args.asr_model)
    if args.speech_packings is not None:
        from .training import speech  # noqa: PLC0415

        speech.PACKINGS = speech.AUGMENTED_PACKINGS = args.speech_packings
    # A smoke run never overwrites the shipped weights unless asked to.
    out = ROOT / "build" / "out" / ("quick" if args.quick else "")
    args.runs = args.runs or out / "runs"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.part == "end_to_end":  # fine-tunes the shipped weights into a folder of its own
        from .training.end_to_end import OUT, train_end_to_end  # noqa: PLC0415

        args.weights = args.weights or (out / "end_to_end" if args.quick else OUT)
        train_end_to_end(args)
        return
    args.weights = args.weights or (out / "weights" if args.quick else ROOT / settings.WEIGHTS_DIR)
    if args.part == "multimodal":
        train_multimodal(args)
        return
    parts = ("audio", "visual", "text", "fusion", "loco", "group", "sparse") if args.part == "all" else (args.part,)
    parts = tuple(p for p in parts if p in (*settings.ASR_PARTS, "loco")) if other_asr else parts
    for part in parts:
        if part == "loco":
            train_leave_one_corpus_out(args)
        elif part == "fusion":
            from .training.fusion_fit import train_fusion  # noqa: PLC0415

            train_fusion(args)
        elif part == "group" and args.vgaf is not None:
            from .training.vgaf import train_group_on_videos  # noqa: PLC0415

            train_group_on_videos(args)
        elif part == "group":
            from .training.group import train_group  # noqa: PLC0415

            train_group(args)
        elif part == "sparse":
            from .training.sparse import train_sparse  # noqa: PLC0415

            train_sparse(args)
        else:
            train_branch(part, args)
            if part == "visual" and args.part == "all" and not args.quick:  # the shipped visual branch is fine-tuned once
                args.init = weights_path(args.weights, "visual")
                train_branch(part, args)
                args.init = None


if __name__ == "__main__":
    main()
