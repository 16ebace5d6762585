"""The V2EM model definitions (one file per architecture) and the one factory that creates them."""

from __future__ import annotations

import torch

from .. import config

# Names are the Triton model names the exported files serve under.
ENCODER_NAMES = ("audio_encoder", "visual_encoder", "text_encoder", "fusion")


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
    raise KeyError(f"unknown model {name!r}; known: {', '.join(ENCODER_NAMES)}")


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
        segments = max(batch, 2)
        audio_owner = torch.arange(segments * 4) // 4
        audio_owner[-1] = -1  # a padding row
        return (
            torch.randn(segments * 4, config.FEATURE_DIM),
            audio_owner,
            torch.randn(segments, config.FEATURE_DIM),
            torch.arange(segments),
            torch.randn(segments, config.TEXT_FEATURE_DIM),
            torch.arange(segments) % 2 == 0,
        )
    raise KeyError(name)


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
