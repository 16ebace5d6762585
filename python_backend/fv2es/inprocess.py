"""The whole pipeline in one Python process, without a server: the steps of `fv2es.pipeline`, in its
order, each run by the same function its Triton model runs (`fv2es.stages`, the exported TorchScript).

This is what a user would write by hand; the benchmarks compare the server with it, and a test
checks that both give the same scores.
"""

from __future__ import annotations

from pathlib import Path
import numpy as np
import torch

from . import checks, config, modalities, pipeline, stages
from .asr import SpeechRecognizer
from .audio import mel_transform
from .faces import make_face_detector
from .models import forward_arguments, load_for_inference, takes_dictionary
from .text import load_tokenizer

Arrays = dict[str, np.ndarray]


class InProcessPipeline:
    def __init__(self, repository: Path, entries: tuple[modalities.Modality, ...] | None = None, sparse_visual: bool | None = None):
        self.modalities = entries or modalities.modalities()
        self.steps = pipeline.steps(modalities=self.modalities, sparse_visual=sparse_visual)
        self.limits = checks.Limits()  # config's limits (a server reads its models' parameters)
        self.detector = make_face_detector()
        self.recognizer = SpeechRecognizer()
        self.tokenizer = load_tokenizer()
        self.transform = mel_transform()
        self.models = {s.name: load_for_inference(str(repository / s.name / "1" / "model.pt")) for s in self.steps if s.torchscript and s.serves_model}

    def run_model(self, name: str, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """A TorchScript model's outputs, in order, on its inputs by name: as one dictionary (the fusion,
        the group model) or in order."""
        tensors = {k: torch.from_numpy(np.ascontiguousarray(x)) for k, x in inputs.items()}
        model = self.models[name]
        with torch.inference_mode():
            result = model(tensors) if takes_dictionary(forward_arguments(model)) else model(*tensors.values())
        return [r.numpy() for r in (result if isinstance(result, (tuple, list)) else (result,))]

    def analyze(self, video: bytes) -> Arrays:
        """The ensemble's outputs for one video (MODEL_INFO aside)."""
        return self.run({"VIDEO": video})

    def run_step(self, step: pipeline.Step, x: dict) -> Arrays:
        """The in-process twin of the serving runner fv2es/serving/<runner>.py: inputs by name -> outputs by name."""
        if step.runner == "demux":
            return stages.demux(x["VIDEO"], limits=self.limits)
        if step.runner == "face_crop":
            return stages.face_crop(x["VIDEO"], self.detector, duration=x["DURATION"], limits=self.limits)
        if step.runner == "asr":
            return stages.asr(x["AUDIO"], x["DURATION"], self.recognizer, self.tokenizer, audio_start=x["AUDIO_START"],
                              limits=self.limits, speech_probs=x.get("SPEECH_PROBS"))
        if step.runner == "mel":
            return stages.mel(x["AUDIO"], x["SEGMENT_TIMES"], self.transform, audio_start=x["AUDIO_START"], limits=self.limits)
        if step.runner == "assign_faces":
            return stages.assign_faces(x["FACE_TIMES"], x["FACE_MAIN"], x["SEGMENT_TIMES"], limits=self.limits)
        if step.runner == "people":
            return stages.people(x, self.modalities, limits=self.limits)
        if step.runner == "torchscript":
            return dict(zip((o.name for o in step.outputs), self.run_model(step.model_name, {i.name: x[i.name] for i in step.inputs})))
        if step.runner == "aggregate":
            return stages.aggregate(x["SEGMENT_SCORES"], x["SEGMENT_TIMES"], list(config.LABELS), limits=self.limits)
        if step.runner == "people_aggregate":
            return stages.people_aggregate(x["PERSON_PAIRS"], x["PAIR_SCORES"], x["SEGMENT_TIMES"], limits=self.limits)
        raise ValueError(f"step {step.name}: no in-process runner {step.runner!r}")

    def run(self, tensors: dict, wanted: tuple[str, ...] = pipeline.ENSEMBLE_OUTPUTS) -> Arrays:
        """Runs the steps that `wanted` (default the ensemble's outputs) needs from `tensors` (all of
        them from {"VIDEO": bytes}; those after preprocessing from what a two-phase pipeline read back
        from its files), in the pipeline's order, and returns `wanted` (MODEL_INFO aside). Training
        asks for a step's inputs (build/training/vgaf.py: the group model's)."""
        tensors = dict(tensors)
        for step in pipeline.plan(self.steps, set(tensors), wanted):
            outputs = self.run_step(step, {i.name: tensors[step.source(i.name)] for i in step.inputs_from(tensors)})
            tensors.update({step.target(name): value for name, value in outputs.items()})
        return {name: tensors[name] for name in wanted if name in tensors}
