"""The V2EM model definitions (one file per architecture) and the one factory that creates them."""

from __future__ import annotations

import torch

from .. import config, modalities, pipeline

# Names are the Triton model names the exported files serve under: each modality's encoder, and the fusion.
ENCODER_NAMES = (*(m.encoder for m in modalities.modalities()), "fusion")
SPARSE_MODEL = pipeline.SPARSE_STEP  # FE2E's sparse cross-modal attention over the face rows (config.SPARSE_VISUAL)


def create(name: str, **kwargs) -> torch.nn.Module:
    """A freshly initialised model (training form) by its repository name."""
    if name == "audio_encoder":
        from .audio import HierarchicalSpectrumEncoder, SpeechStateEncoder

        return SpeechStateEncoder(**kwargs) if config.AUDIO_INPUT == "whisper" else HierarchicalSpectrumEncoder(**kwargs)
    if name == "visual_encoder":
        from .visual import RepVGGEncoder

        return RepVGGEncoder(**kwargs)
    if name == "text_encoder":
        from .text import TextEncoder

        return TextEncoder(**kwargs)
    if name == "fusion":
        from .fusion import Fv2esFusion

        return Fv2esFusion(**kwargs)
    if name == "group":
        from .group import GroupEmotion

        return GroupEmotion(**kwargs)
    if name == SPARSE_MODEL:
        from .sparse import SparseFaceSelect

        return SparseFaceSelect(**kwargs)
    raise KeyError(f"unknown model {name!r}; known: {', '.join(ENCODER_NAMES)}, group, {SPARSE_MODEL}")


def example_inputs(name: str, batch: int = 3) -> tuple[torch.Tensor, ...]:
    """Inputs of the serving shapes, for tracing and for the eager == TorchScript checks."""
    if name == "audio_encoder":
        if config.AUDIO_INPUT == "whisper":
            return (torch.randn(batch, 2 * config.SPEECH_STATE_DIM),)
        return (torch.randn(batch, config.N_MELS, config.CHUNK_FRAMES),)
    if name == "visual_encoder":
        return (torch.randn(batch, 1, config.FACE_SIZE, config.FACE_SIZE),)
    if name == "text_encoder":
        ids = torch.randint(1000, 2000, (batch, config.TEXT_MAX_TOKENS))
        mask = torch.ones_like(ids)
        mask[0, 5:] = 0  # one padded row so the trace keeps the masking path
        return ids, mask
    if name == "fusion":
        return (fusion_example(batch),)
    if name == "group":
        return (group_example(batch),)
    if name == SPARSE_MODEL:
        return (sparse_example(batch),)
    raise KeyError(name)


def group_example(batch: int = 3) -> dict[str, torch.Tensor]:
    """The group model's inputs by name for max(batch, 2) segments of 2 s: two frames per segment with
    two faces each (one placeholder face row, one frame past the last segment), speech in every other one."""
    segments = max(batch, 2)
    frame_times = torch.arange(segments * 2) * 1.0 + 0.5
    audio = modalities.by_name("audio")
    speech_owner = torch.arange(segments * 3) // 3
    speech_owner[speech_owner % 2 == 1] = -1
    return {
        "SEGMENT_TIMES": torch.stack([torch.arange(segments) * 2.0, torch.arange(segments) * 2.0 + 2.0], 1),
        "VISUAL_FEATURES": torch.randn(segments * 4 + 1, config.FEATURE_DIM),
        "FACE_TIMES": torch.cat([frame_times.repeat_interleave(2), torch.tensor([-1.0])]),
        "SCENE": torch.randn(segments * 2 + 1, 1, config.SCENE_SIZE, config.SCENE_SIZE),
        "SCENE_TIMES": torch.cat([frame_times, torch.tensor([segments * 2.0 + 1])]),
        audio.features: torch.randn(segments * 3, audio.feature_dim),
        audio.index: speech_owner,
    }


def sparse_example(batch: int = 3) -> dict[str, torch.Tensor]:
    """The face selection's inputs: the fusion's (the face modality's features aside) and five face
    rows per segment of two persons (the last row of the video a placeholder outside every segment)."""
    example = fusion_example(batch)
    segments = example[modalities.segment_count_input(modalities.modalities())].shape[0]
    face = modalities.face_modality(modalities.modalities())
    del example[face.features]
    rows = segments * 5
    owner = torch.arange(rows) // 5
    owner[-1] = -1
    person = torch.arange(rows) % 2
    person[-1] = -1
    starts = torch.arange(segments) * 2.5  # five faces 0.5 s apart per segment
    return {**example, face.index: owner, "FACES": torch.randn(rows, 1, config.FACE_SIZE, config.FACE_SIZE),
            "FACE_TIMES": torch.arange(rows) * 0.5, "FACE_PERSON": person, "SEGMENT_TIMES": torch.stack([starts, starts + 2.5], 1)}


def fusion_example(batch: int = 3, entries: tuple[modalities.Modality, ...] | None = None) -> dict[str, torch.Tensor]:
    """The fusion's inputs by name for max(batch, 2) segments: four rows per segment of each sequence
    modality (the last one a padding row), one row per segment of each per-segment modality (every
    other one present)."""
    segments = max(batch, 2)
    example = {}
    for m in entries or modalities.modalities():
        if m.sequence:
            owner = torch.arange(segments * 4) // 4
            owner[-1] = -1
            example[m.features], example[m.index] = torch.randn(segments * 4, m.feature_dim), owner
        else:
            example[m.features], example[m.index] = torch.randn(segments, m.feature_dim), torch.arange(segments) % 2 == 0
    return example


def to_torchscript(name: str, model: torch.nn.Module) -> torch.jit.ScriptModule:
    """The deploy form of `model` as TorchScript (RepVGG re-parameterised; the text encoder traced)."""
    model = model.eval()
    if name == "visual_encoder":
        from .visual import reparameterise

        model = reparameterise(model)
    with torch.no_grad():
        if name == "text_encoder":
            from .text import PaddingTrimmed

            traced = torch.jit.trace(model, example_inputs(name), check_trace=False)
            return torch.jit.script(PaddingTrimmed(traced))
        return torch.jit.script(model)


def forward_arguments(module: torch.jit.ScriptModule) -> list[tuple[str, str]]:
    """The arguments (name, type) of a TorchScript module's forward(), without self."""
    return [(a.name, str(a.type)) for a in module.forward.schema.arguments[1:]]


def takes_dictionary(arguments: list[tuple[str, str]]) -> bool:
    """forward() takes its inputs as one Dict[str, Tensor] by name (the fusion: its inputs follow the
    modalities; Triton's PyTorch backend passes such a model its inputs by their config names)."""
    return len(arguments) == 1 and arguments[0][1].startswith("Dict[str, Tensor]")


def load_for_inference(path: str, device: str = "cpu") -> torch.jit.ScriptModule:
    """An exported model, ready to serve: on CPU frozen (weights inlined) and optimised for
    inference (convolutions fused with their activations by oneDNN), which is device-specific, so it
    happens at load time and the exported file stays device-neutral. The server and the in-process
    baseline both load through here."""
    return prepare_for_inference(torch.jit.load(path, map_location=device), device)


def prepare_for_inference(model: torch.jit.ScriptModule, device: str = "cpu") -> torch.jit.ScriptModule:
    """What `load_for_inference` does to a model already loaded (e.g. to read its parameters first)."""
    model = model.eval()
    if device == "cpu":
        model = torch.jit.optimize_for_inference(torch.jit.freeze(model))
    return model
