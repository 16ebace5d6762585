"""FE2E's sparse cross-modal attention (Dai et al. 2021, "Multimodal End-to-End Sparse Model for
Emotion Recognition") over the face rows, before the visual encoder (config.SPARSE_VISUAL).

FE2E lets the text and audio of an utterance attend over the regions of its frames' CNN feature
maps (additive attention: tanh(W_x x + W_y y), then a linear score, softmax over the regions) and
keeps the regions holding a share of the attention (the nucleus: sorted by weight, those whose
cumulative weight before them is below the threshold, 0.9 by default); the later CNN layers run on
those alone. Here the rows are the face crops, every person's, each in the segment its time falls
in (as fv2es.people and the group model place them): each face is seen at low resolution
(average-pooled to 12 x 12, a linear key), each segment's query is its audio rows' mean feature and
its text feature, each with a presence flag (other modalities: the same, from their entries); the
attention is a softmax over the segment's faces, and the nucleus (`mass`) plus the best face of
every person seen in the segment (so the per-person timelines keep their pairs) and the segment's
best main face (so the segment scores keep a face) are kept. Rows
outside every segment and placeholder rows (person -1) are dropped; if nothing is left, the first
row (face_crop's placeholder, when no face was found) is kept, so the visual encoder always gets a
row. The face modality's index (which faces the segment scores read: each frame's main face) is
passed through for the kept rows.

forward() returns the kept rows of the face-row tensors (fv2es.pipeline.FACE_ROWS, then the face
modality's segment index), in their original order. `attention()` is what training fits
(build/training/sparse.py).
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .. import config, modalities as modality_registry
from ..modalities import Modality, face_modality
from .group import segment_of

POOL = 4  # faces are keyed at FACE_SIZE / POOL pixels a side


class SparseFaceSelect(nn.Module):
    def __init__(self, *, modalities: tuple[Modality, ...] | None = None, mass: float = config.SPARSE_VISUAL_MASS,
                 key_dim: int = 64):
        super().__init__()
        entries = modalities or modality_registry.modalities()
        face = face_modality(entries)
        queries = tuple(m for m in entries if m is not face)
        modality_registry.check(queries)  # a per-segment modality among them gives the segment count
        self.face_index = face.index
        self.segment_count_input = modality_registry.segment_count_input(queries)
        self.query_features: List[str] = [m.features for m in queries]
        self.query_index: List[str] = [m.index for m in queries]
        self.query_sequence: List[bool] = [m.sequence for m in queries]
        self.pool = POOL
        side = config.FACE_SIZE // POOL
        self.key = nn.Linear(side * side, key_dim)  # FE2E's channel_affine
        self.query = nn.Linear(sum(m.feature_dim + 1 for m in queries), key_dim, bias=False)  # its y_affine
        self.score = nn.Linear(key_dim, 1)  # its attn_weight_affine
        self.register_buffer("mass", torch.tensor(float(mass)), persistent=False)  # a serving setting, not a weight

    def segment_queries(self, inputs: Dict[str, Tensor], n_segments: int) -> Tensor:
        """[S, sum(D + 1)]: per query modality, its rows' mean in each segment (or the segment's row)
        and a 0/1 flag that the segment has it; zeros where it has not."""
        parts: List[Tensor] = []
        for i in range(len(self.query_features)):
            features, index = inputs[self.query_features[i]], inputs[self.query_index[i]]
            if self.query_sequence[i]:
                seen = index >= 0
                owner = index[seen]
                sums = torch.zeros(n_segments, features.shape[1], dtype=features.dtype, device=features.device)
                sums = sums.index_add(0, owner, features[seen])
                counts = torch.zeros(n_segments, dtype=features.dtype, device=features.device)
                counts = counts.index_add(0, owner, torch.ones_like(owner, dtype=features.dtype))
                present = (counts > 0).to(features.dtype)
                parts.append(sums / counts.clamp(min=1.0).unsqueeze(1))
            else:
                present = index.to(torch.bool).to(features.dtype)
                parts.append(features * present.unsqueeze(1))
            parts.append(present.unsqueeze(1))
        return torch.cat(parts, dim=1)

    def face_segments(self, inputs: Dict[str, Tensor]) -> Tensor:
        """[N] the segment each face's time falls in; -1 outside every segment and for placeholder rows."""
        owner = segment_of(inputs["FACE_TIMES"], inputs["SEGMENT_TIMES"])
        return torch.where(inputs["FACE_PERSON"] >= 0, owner, torch.full_like(owner, -1))

    def attention(self, inputs: Dict[str, Tensor]) -> Tensor:
        """[N] each face row's attention within its segment (a softmax over the segment's rows; 0 for
        rows outside every segment)."""
        faces, segment = inputs["FACES"], self.face_segments(inputs)
        n_segments = inputs[self.segment_count_input].shape[0]
        query = self.query(self.segment_queries(inputs, n_segments))
        keys = self.key(F.avg_pool2d(faces, self.pool).flatten(1))
        seen = segment >= 0
        owner = segment.clamp(min=0)
        logits = self.score(torch.tanh(keys + query[owner])).squeeze(1)
        logits = logits.masked_fill(~seen, -1e9)
        top = torch.full((n_segments,), -1e9, dtype=logits.dtype, device=logits.device)
        top = top.scatter_reduce(0, owner, logits, reduce="amax")
        weights = torch.exp(logits - top[owner]) * seen.to(logits.dtype)
        totals = torch.zeros(n_segments, dtype=logits.dtype, device=logits.device).index_add(0, owner, weights)
        return weights / totals[owner].clamp(min=1e-12)

    def keep(self, attention: Tensor, segment: Tensor, person: Tensor, main: Tensor) -> Tensor:
        """[N] bool: the nucleus of each segment's attention, every (segment, person)'s best row and
        each segment's best main face (`main`: the rows the segment scores read)."""
        n = attention.shape[0]
        positions = torch.arange(n, device=attention.device)
        order = torch.sort(attention, descending=True, stable=True)[1]
        order = order[torch.sort(segment[order], stable=True)[1]]  # by segment, then attention
        ranked_segment, ranked = segment[order], attention[order]
        before = torch.cumsum(ranked, 0) - ranked  # attention of the rows ranked above, all segments
        starts = torch.ones(n, dtype=torch.bool, device=attention.device)
        starts[1:] = ranked_segment[1:] != ranked_segment[:-1]
        first = torch.cummax(torch.where(starts, positions, torch.zeros_like(positions)), 0)[0]
        chosen = (before - before[first]) < self.mass
        # the first row, in this order, of each (segment, person) and of each segment's main faces
        people = int(person.max()) + 2 if n > 0 else 1
        for key in (ranked_segment * people + person[order] + 1, torch.where(main[order], ranked_segment, -1)):
            _, inverse = torch.unique(key, return_inverse=True)
            best = torch.full((n,), n, dtype=positions.dtype, device=attention.device)
            best = best.scatter_reduce(0, inverse, positions, reduce="amin")
            best = best[best < n]
            chosen[best[key[best] >= 0]] = True  # keys < 0: outside every segment, or not a main face
        chosen = chosen & (ranked_segment >= 0)
        kept = torch.zeros(n, dtype=torch.bool, device=attention.device)
        kept[order] = chosen
        if n > 0 and not bool(kept.any()):
            kept[0] = True
        return kept

    def forward(self, inputs: Dict[str, Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        main = inputs[self.face_index] >= 0
        kept = self.keep(self.attention(inputs), self.face_segments(inputs), inputs["FACE_PERSON"], main)
        return inputs["FACES"][kept], inputs["FACE_TIMES"][kept], inputs["FACE_PERSON"][kept], inputs[self.face_index][kept]
