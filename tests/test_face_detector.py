"""The face detectors: MTCNN (default), the Haar fallback, the factory, batching, face_crop's device."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from conftest import SAMPLE
from fv2es import config
from fv2es.faces import FaceDetector, MtcnnFaceDetector, main_faces, make_face_detector, video_faces
from fv2es.media import sample_frames


@pytest.fixture(scope="module")
def frames():
    return list(sample_frames(SAMPLE.read_bytes()))


@pytest.fixture(scope="module")
def mtcnn():
    return make_face_detector("mtcnn", "cpu")


def test_mtcnn_finds_the_sample_face(frames, mtcnn):
    assert isinstance(mtcnn, MtcnnFaceDetector)
    crops, times = main_faces(video_faces(frames, mtcnn))
    assert len(times) >= 0.9 * len(frames)
    assert crops.shape[1:] == (1, config.FACE_SIZE, config.FACE_SIZE)


def test_haar_fallback_still_works(frames):
    detector = make_face_detector("haar")
    assert isinstance(detector, FaceDetector)
    _, times = main_faces(video_faces(frames, detector))
    assert len(times) >= 0.9 * len(frames)


def test_detectors_agree_on_the_face(frames, mtcnn):
    """Same place and about the same size: the crops the encoder gets do not depend on the detector."""
    grey = frames[0][1]
    (mx, my, mw, mh), (hx, hy, hw, hh) = mtcnn.largest_face(grey), make_face_detector("haar").largest_face(grey)
    assert abs((mx + mw / 2) - (hx + hw / 2)) < 0.2 * hw and abs((my + mh / 2) - (hy + hh / 2)) < 0.2 * hh
    assert 0.7 < max(mw, mh) / max(hw, hh) < 1.4


def test_unknown_detector_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown face detector 'yolo'.*mtcnn, haar"):
        make_face_detector("yolo")


def test_batched_detection_equals_one_by_one(frames, mtcnn):
    greys = [grey for _, grey in frames[: config.MTCNN_BATCH]]
    assert mtcnn.largest_faces(greys) == [mtcnn.largest_faces([grey])[0] for grey in greys]


def test_tracked_search_finds_the_face_near_the_last_one(frames, mtcnn):
    first = mtcnn.largest_face(frames[0][1])
    tracked = mtcnn.largest_face(frames[1][1], near=first)
    assert tracked is not None and abs(tracked[0] - first[0]) < first[2] / 2


def test_faceless_frames_give_no_faces(mtcnn):
    blank = [(t, np.full((240, 320), 90, np.uint8)) for t in range(10)]
    rows = video_faces(blank, mtcnn)
    assert rows["FACES"].shape == (0, 1, config.FACE_SIZE, config.FACE_SIZE) and rows["FACE_TIMES"].shape == (0,)
    assert all(len(rows[key]) == 0 for key in ("FACE_PERSON", "FACE_MAIN", "FACE_MOUTH"))


def _face_crop_model(monkeypatch, kind: str, device_id: int):
    """face_crop initialised as Triton would (a fake triton_python_backend_utils); the detector it asks for."""
    fake = types.ModuleType("triton_python_backend_utils")
    fake.triton_string_to_numpy = lambda name: np.float32
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    for module in ("fv2es.serving.base", "fv2es.serving.face_crop"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    from fv2es.serving import face_crop

    built = []
    monkeypatch.setattr(face_crop, "make_face_detector", lambda *args: built.append(args))
    monkeypatch.setattr("torch.set_num_threads", lambda n: None)  # not this test process's threads
    model_config = '{"parameters": {"detector": {"string_value": "mtcnn"}}, "output": []}'
    args = {"model_config": model_config, "model_name": "face_crop", "model_repository": "/models/face_crop",
            "model_version": "1", "model_instance_kind": kind, "model_instance_device_id": str(device_id)}
    face_crop.TritonPythonModel().initialize(args)
    return built[0]


def test_face_crop_runs_the_detector_on_the_instance_device(monkeypatch):
    assert _face_crop_model(monkeypatch, "GPU", 1)[:2] == ("mtcnn", "cuda:1")
    assert _face_crop_model(monkeypatch, "CPU", 0)[:2] == ("mtcnn", "cpu")


def test_mtcnn_finds_a_tilted_face(frames, mtcnn, monkeypatch):
    """A face tilted by 45 degrees, which the upright search misses, is found in a turned copy."""
    import cv2

    grey = frames[0][1]
    height, width = grey.shape
    x, y, w, h = mtcnn.largest_face(grey)
    for angle in (45, -45):
        turn = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
        tilted = cv2.warpAffine(grey, turn, (width, height))
        cx, cy = turn @ (x + w / 2, y + h / 2, 1.0)  # where the face's centre went
        box = mtcnn.largest_face(tilted)
        assert box is not None and np.hypot(box[0] + box[2] / 2 - cx, box[1] + box[3] / 2 - cy) < w / 2
        with monkeypatch.context() as m:
            m.setattr(config, "MTCNN_MISS_ROTATIONS", ())
            assert mtcnn.largest_face(tilted) is None
