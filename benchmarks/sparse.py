"""FE2E's sparse face selection (config.SPARSE_VISUAL) against encoding every face, in one run.

Two repositories with the same exported models, one with the selection and one without
(fv2es_build.repository.sparse_variant builds the one the served repository is not), served at once
by this checkout's launcher; the 60 s clip is sent to one then the other, in turns
(benchmarks/earlier.py's `in_turns`), and each model's compute time per request is read from Triton's
statistics. The faces each one encodes come from the in-process pipeline on the same clip; the
accuracy of both settings on composed segments from the selection's weights record
(build/training/sparse.py measured them when it was trained).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from earlier import in_turns
from fv2es import config, models
from fv2es.inprocess import InProcessPipeline
from fv2es_build import settings
from fv2es_build.repository import ROOT, sparse_variant

SETTINGS = {True: "sparse", False: "every face"}


def measure(served: Path, video: bytes, rounds: int, out: Path) -> dict:
    other = sparse_variant(out / "sparse_other" / "models", not config.SPARSE_VISUAL, served)
    repositories = {SETTINGS[config.SPARSE_VISUAL]: served, SETTINGS[not config.SPARSE_VISUAL]: other}
    with_it = repositories["sparse"]
    rows = InProcessPipeline(with_it, sparse_visual=True).run({"VIDEO": video}, wanted=("FACES", "KEPT_FACES"))
    times, model_s = in_turns(repositories, video, rounds)
    record = torch.load(ROOT / settings.WEIGHTS_DIR / f"{settings.SPARSE_PART}.pt", weights_only=False, map_location="cpu")
    return {"rounds": rounds, "times": times, "model_s": model_s, "medians_s": {k: statistics.median(v) for k, v in times.items()},
            "faces": len(rows["FACES"]), "faces_kept": len(rows["KEPT_FACES"]), "mass": config.SPARSE_VISUAL_MASS,
            "default": SETTINGS[config.SPARSE_VISUAL], "accuracy": record["comparison"], "trained": record.get("command", "")}


def markdown(r: dict) -> list[str]:
    on, off = r["model_s"]["sparse"], r["model_s"]["every face"]
    visual_on = on.get("visual_encoder", 0.0) + on.get(models.SPARSE_MODEL, 0.0)
    lines = ["", "## Sparse cross-modal attention (FE2E) against every face (60 s clip)", "",
             f"`config.SPARSE_VISUAL` (now: {r['default']}): the segment's audio and text features score its faces and only "
             f"those holding {r['mass']:g} of the attention, and every person's best face, go through the visual encoder",
             "(`fv2es/models/sparse.py`). Both settings' repositories (the same exported models) served at once, the clip sent to",
             f"one then the other, {r['rounds']} rounds after one warm-up each (`benchmarks/sparse.py`). Seconds per request.", "",
             "| setting | faces encoded | median s | min s | max s | visual_encoder s | face_select s |", "|---|---|---|---|---|---|---|"]
    for name, faces in (("every face", r["faces"]), ("sparse", r["faces_kept"])):
        t, m = r["times"][name], r["model_s"][name]
        lines.append(f"| {name} | {faces} | {statistics.median(t):.2f} | {min(t):.2f} | {max(t):.2f} | "
                     f"{m.get('visual_encoder', 0.0):.3f} | {m.get(models.SPARSE_MODEL, 0.0):.3f} |")
    lines += ["", f"Sparse / every face: {r['medians_s']['sparse'] / r['medians_s']['every face']:.2f}x the request's median; "
              f"visual encoder and selection together {visual_on / max(off.get('visual_encoder', 1e-9), 1e-9):.2f}x the visual "
              f"encoder's compute on every face; {r['faces_kept'] / max(r['faces'], 1):.0%} of the faces encoded.", "",
              f"Accuracy of the served fusion on composed validation segments (from `{r['trained']}`; MODEL_CARD.md says how they are made):", "",
              "| segments | n | every face | sparse | as many faces at random | faces kept |", "|---|---|---|---|---|---|"]
    for kind, c in r["accuracy"].items():
        lines.append(f"| {kind} | {c['segments']} | {c['every face']['accuracy']:.3f} | {c['sparse']['accuracy']:.3f} | "
                     f"{c['random, as many']['accuracy']:.3f} | {c['faces kept']:.0%} |")
    return lines
