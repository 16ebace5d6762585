"""Input checks inside TorchScript, for the models that Triton's PyTorch backend serves
(`fv2es-build --torchscript-backend libtorch`). No Python runs before those models, so the checks of
the Python runner (fv2es.checks) cannot; and an index past the end of a tensor on a GPU is a
device-side assert that breaks the process's CUDA context for every later request. Each check here
raises instead, which the backend returns as that request's error."""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn

from .. import modalities


def check_index(index: Tensor, size: int, name: str, low: int) -> None:
    if index.numel() > 0 and (bool((index < low).any()) or bool((index >= size).any())):
        raise ValueError(name + " holds an index outside " + str(low) + ".." + str(size - 1))


def check_rows(a: Tensor, a_name: str, b: Tensor, b_name: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(a_name + " and " + b_name + " have different row counts")


class CheckedTextEncoder(nn.Module):
    """Token ids within the vocabulary (an embedding lookup past it is such an assert)."""

    def __init__(self, encoder: torch.jit.ScriptModule, vocab_size: int):
        super().__init__()
        self.encoder = encoder
        self.vocab_size = vocab_size

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        check_index(input_ids, self.vocab_size, "TEXT_IDS", 0)
        check_rows(input_ids, "TEXT_IDS", attention_mask, "TEXT_MASK")
        return self.encoder(input_ids, attention_mask)


class CheckedFusion(nn.Module):
    """Each modality's rows and index agree in count; segment ids in [-1, S) for S segments (the rows of
    the first per-segment modality's features); every per-segment modality has S rows."""

    def __init__(self, fusion: torch.jit.ScriptModule, entries: tuple[modalities.Modality, ...]):
        super().__init__()
        self.fusion = fusion
        self.segment_count_input = modalities.segment_count_input(entries)
        self.features: List[str] = [m.features for m in entries]
        self.index: List[str] = [m.index for m in entries]
        self.sequence: List[bool] = [m.sequence for m in entries]

    def forward(self, inputs: Dict[str, Tensor]) -> Tensor:
        check_modalities(inputs, self.features, self.index, self.sequence, self.segment_count_input, "the fusion")
        return self.fusion(inputs)


def check_modalities(inputs: Dict[str, Tensor], features: List[str], index: List[str], sequence: List[bool],
                     segment_count_input: str, model: str) -> int:
    """Modalities' features and indices (as CheckedFusion describes); returns the segment count."""
    for name in features + index:
        if name not in inputs:
            raise ValueError(model + " needs input " + name)
    segments = inputs[segment_count_input].shape[0]
    for i in range(len(features)):
        rows, ids = inputs[features[i]], inputs[index[i]]
        check_rows(rows, features[i], ids, index[i])
        if sequence[i]:
            check_index(ids, segments, index[i], -1)
        elif rows.shape[0] != segments:
            raise ValueError(features[i] + " and " + segment_count_input + " have different row counts")
    return segments


class CheckedFaceSelect(nn.Module):
    """The sparse face selection (models/sparse.py): the other modalities as for the fusion; the face
    rows agree in count and their segment ids are in [-1, S)."""

    def __init__(self, select: torch.jit.ScriptModule, entries: tuple[modalities.Modality, ...]):
        super().__init__()
        self.select = select
        face = modalities.face_modality(entries)
        queries = tuple(m for m in entries if m is not face)
        self.segment_count_input = modalities.segment_count_input(queries)
        self.features: List[str] = [m.features for m in queries]
        self.index: List[str] = [m.index for m in queries]
        self.sequence: List[bool] = [m.sequence for m in queries]
        self.face_index = face.index

    def forward(self, inputs: Dict[str, Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        segments = check_modalities(inputs, self.features, self.index, self.sequence, self.segment_count_input, "the face selection")
        for name in ["FACES", "FACE_TIMES", "FACE_PERSON", self.face_index, "SEGMENT_TIMES"]:
            if name not in inputs:
                raise ValueError("the face selection needs input " + name)
            if name != "SEGMENT_TIMES":
                check_rows(inputs["FACES"], "FACES", inputs[name], name)
        if inputs["SEGMENT_TIMES"].shape[0] != segments:
            raise ValueError("SEGMENT_TIMES and " + self.segment_count_input + " have different row counts")
        check_index(inputs[self.face_index], segments, self.face_index, -1)
        return self.select(inputs)


class CheckedGroup(nn.Module):
    """The group model's row counts agree (features and times, rows and their segment ids) and its
    audio rows' segment ids are in [-1, S); faces and frames find their segments by time (no index)."""

    def __init__(self, group: torch.jit.ScriptModule, audio: modalities.Modality, visual: modalities.Modality):
        super().__init__()
        self.group = group
        self.audio_features, self.audio_index, self.visual_features = audio.features, audio.index, visual.features

    def forward(self, inputs: Dict[str, Tensor]) -> Tuple[Tensor, Tensor]:
        for name in [self.visual_features, "FACE_TIMES", "SCENE", "SCENE_TIMES", self.audio_features, self.audio_index, "SEGMENT_TIMES"]:
            if name not in inputs:
                raise ValueError("the group model needs input " + name)
        check_rows(inputs[self.visual_features], self.visual_features, inputs["FACE_TIMES"], "FACE_TIMES")
        check_rows(inputs["SCENE"], "SCENE", inputs["SCENE_TIMES"], "SCENE_TIMES")
        check_rows(inputs[self.audio_features], self.audio_features, inputs[self.audio_index], self.audio_index)
        check_index(inputs[self.audio_index], inputs["SEGMENT_TIMES"].shape[0], self.audio_index, -1)
        return self.group(inputs)


def embedding_rows(model: torch.jit.ScriptModule, parameter_suffix: str = "word_embeddings.weight") -> int | None:
    """Rows of the token embedding of a TorchScript text model (its vocabulary size), or None.

    Read from the module as loaded, before freezing inlines its weights as constants."""
    for name, parameter in model.named_parameters():
        if name.endswith(parameter_suffix) and parameter.dim() == 2:
            return int(parameter.shape[0])
    return None


def checked(name: str, scripted: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """`scripted` with its input checks, for the PyTorch backend (the encoders of float rows need none)."""
    if name == "text_encoder":
        vocab_size = embedding_rows(scripted)
        if not vocab_size:
            raise ValueError("text_encoder: no word embedding found, so no vocabulary size to check TEXT_IDS against")
        return torch.jit.script(CheckedTextEncoder(scripted, vocab_size))
    if name == "fusion":
        return torch.jit.script(CheckedFusion(scripted, modalities.modalities()))
    if name == "face_select":
        return torch.jit.script(CheckedFaceSelect(scripted, modalities.modalities()))
    if name == "group":
        return torch.jit.script(CheckedGroup(scripted, modalities.by_name("audio"), modalities.by_name("visual")))
    return scripted
