"""The served models are the trained ones: real validation faces and texts through the real server
give the predictions of the trained branches (weights/), well above chance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from conftest import ROOT

from fv2es import config
from fv2es_build import settings
from fv2es.faces import normalise_faces
from fv2es.text import load_tokenizer, tokenize
from fv2es_build.training import data
from fv2es_build.training.weights import load_branch

DATA = ROOT / settings.DATA_DIR
pytestmark = pytest.mark.skipif(not DATA.exists(), reason=f"the validation corpora are not at {DATA}")
N = 300  # validation examples per modality: enough to tell trained from untrained (chance is 1/7)


def infer(server, model: str, inputs: dict[str, np.ndarray], output: str) -> np.ndarray:
    types = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(bool): "BOOL"}
    tensors = []
    for name, array in inputs.items():
        tensor = grpcclient.InferInput(name, list(array.shape), types[array.dtype])
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        return c.infer(model, tensors).as_numpy(output)


def fusion_scores(server, *, visual: np.ndarray | None = None, text: np.ndarray | None = None) -> np.ndarray:
    """Segment scores from the served fusion model, one segment per row of the one modality given."""
    n = len(visual) if visual is not None else len(text)
    placeholder = np.zeros((1, config.FEATURE_DIM), np.float32)
    return infer(server, "fusion", {
        "AUDIO_FEATURES": placeholder,
        "AUDIO_SEGMENT": np.array([-1], np.int64),
        "VISUAL_FEATURES": visual if visual is not None else placeholder,
        "VISUAL_SEGMENT": np.arange(n, dtype=np.int64) if visual is not None else np.array([-1], np.int64),
        "TEXT_FEATURES": text if text is not None else np.zeros((n, config.TEXT_FEATURE_DIM), np.float32),
        "TEXT_PRESENT": np.full(n, text is not None),
    }, "SEGMENT_SCORES")


def served_labels(classes: tuple[str, ...], targets) -> np.ndarray:
    return np.array([config.LABELS.index(config.CLASS_TO_LABEL[classes[int(t)]]) for t in targets])


def test_served_visual_path_is_the_trained_branch(server):
    split = data.load_fer2013(DATA, validation=True).subset(np.arange(N))
    faces = split.inputs.numpy()
    np.testing.assert_array_equal(faces, normalise_faces(np.round(faces[:, 0] * config.FACE_STD + config.FACE_MEAN).astype(np.uint8)))
    features = infer(server, "visual_encoder", {"FACES": faces}, "VISUAL_FEATURES")
    served = fusion_scores(server, visual=features).argmax(1)
    with torch.no_grad():
        branch = load_branch("visual", ROOT / settings.WEIGHTS_DIR)
        eager = branch(split.inputs.unsqueeze(1), torch.zeros(N, 1, dtype=torch.bool)).argmax(1).numpy()
    truth = served_labels(split.classes, split.targets)
    # The same predictions as the trained branch (its classes mapped onto the served labels)...
    assert (served == served_labels(split.classes, eager)).mean() >= 0.99
    # ... and they mean something: FER2013's most frequent class alone would give about 0.25.
    assert (served == truth).mean() >= 0.5


def test_served_text_path_is_the_trained_branch(server):
    split = data.load_meld(DATA, validation=True)
    index = np.random.default_rng(0).permutation(len(split))[:N]
    split = split.subset(index)
    ids, mask = tokenize(load_tokenizer(), split.inputs)
    features = infer(server, "text_encoder", {"TEXT_IDS": ids, "TEXT_MASK": mask}, "TEXT_FEATURES")
    served = fusion_scores(server, text=features).argmax(1)
    with torch.no_grad():
        eager = load_branch("text", ROOT / settings.WEIGHTS_DIR)(torch.from_numpy(ids), torch.from_numpy(mask)).argmax(1).numpy()
    assert (served == served_labels(split.classes, eager)).mean() >= 0.99
    assert (served == served_labels(split.classes, split.targets)).mean() >= 0.5
