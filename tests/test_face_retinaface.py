"""RetinaFace network and weight loading: key layout of the released files, strict loading, clear errors,
prior boxes and decoding, and (when facexlib is installed) agreement with facexlib's detector."""
from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import torch

from conftest import shared_path
from vspbfr_core.errors import CheckpointError, InputError, ModelNotFoundError
from vspbfr_core.face import DETECTOR_FILES, detect_faces, load_detector
from vspbfr_core.face.retinaface import (
    MOBILENET_025, RESNET50, RetinaFaceDetector, decode_boxes, decode_landmarks, prior_boxes,
)

MOBILE_FILE = "detection_mobilenet0.25_Final.pth"
# sha256 of the sorted "key:[shape]" lines of the ResNet-50 network that loads detection_Resnet50_Final.pth
# strictly (456 tensors); the file itself (109 MB) is not available offline.
RESNET50_MANIFEST_SHA256 = "eed424a85f1ad031bea03c2f1f44569000943585e785592feb3278e971f56d0b"


class _Payload:
    """Any non-tensor object: weights_only loading must refuse to unpickle it."""


def manifest(sd: dict[str, torch.Tensor]) -> str:
    return "\n".join(f"{k}:{list(v.shape)}" for k, v in sorted(sd.items()))


@pytest.fixture(scope="module")
def weights_dir():
    return shared_path("weights")


def test_detector_file_names():
    assert DETECTOR_FILES == {"retinaface_resnet50": "detection_Resnet50_Final.pth",
                              "retinaface_mobile0.25": "detection_mobilenet0.25_Final.pth"}


def test_mobilenet_keys_match_the_released_file_exactly(weights_dir):
    sd = torch.load(weights_dir / MOBILE_FILE, map_location="cpu", weights_only=True)
    net = RetinaFaceDetector(MOBILENET_025)
    assert manifest(net.state_dict()) == manifest(sd)


def test_resnet50_keys_match_the_released_layout():
    with torch.device("meta"):
        net = RetinaFaceDetector(RESNET50, "retinaface_resnet50")
    sd = net.state_dict()
    assert len(sd) == 456
    assert hashlib.sha256(manifest(sd).encode()).hexdigest() == RESNET50_MANIFEST_SHA256


def test_resnet50_layout_equals_facexlib_when_installed():
    fx = pytest.importorskip("facexlib.detection.retinaface")
    ref = fx.RetinaFace(network_name="resnet50", device="cpu")
    with torch.device("meta"):
        ours = RetinaFaceDetector(RESNET50, "retinaface_resnet50")
    assert manifest(ours.state_dict()) == manifest(ref.state_dict())


def test_load_detector_is_strict_eval_and_gradient_free(weights_dir):
    det = load_detector("retinaface_mobile0.25", weights_dir)
    assert isinstance(det, RetinaFaceDetector) and not det.training
    assert det.config == MOBILENET_025 and det.name == "retinaface_mobile0.25"
    assert all(not p.requires_grad for p in det.parameters())
    assert not any(t.is_meta for t in list(det.parameters()) + list(det.buffers()))
    sd = torch.load(weights_dir / MOBILE_FILE, map_location="cpu", weights_only=True)
    for k, v in det.state_dict().items():
        assert torch.equal(v, sd[k]), k
    # the short names of `vspbfr download --detector` work too, and a list of folders is searched in order
    assert load_detector("mobile0.25", ["/nonexistent-folder", weights_dir]).name == "retinaface_mobile0.25"


def test_missing_file_names_file_folder_and_source(tmp_path):
    with pytest.raises(ModelNotFoundError) as info:
        load_detector("retinaface_resnet50", [tmp_path, tmp_path / "other"])
    msg = str(info.value)
    assert "detection_Resnet50_Final.pth" in msg and str(tmp_path) in msg and str(tmp_path / "other") in msg
    assert "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth" in msg
    assert "vspbfr download" in msg and "--detector resnet50" in msg
    assert "Nothing is downloaded automatically" in msg
    assert list(tmp_path.iterdir()) == []                  # and nothing was written


def test_unknown_name_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="retinaface_resnet50"):
        load_detector("yolov5n", tmp_path)


def test_module_prefix_is_stripped(tmp_path, weights_dir):
    sd = torch.load(weights_dir / MOBILE_FILE, map_location="cpu", weights_only=True)
    torch.save({"module." + k: v for k, v in sd.items()}, tmp_path / MOBILE_FILE)
    det = load_detector("retinaface_mobile0.25", tmp_path)
    assert torch.equal(det.BboxHead[0].conv1x1.weight, sd["BboxHead.0.conv1x1.weight"])


def test_wrong_network_file_is_a_checkpoint_error(tmp_path, weights_dir):
    shutil.copyfile(weights_dir / MOBILE_FILE, tmp_path / "detection_Resnet50_Final.pth")
    with pytest.raises(CheckpointError, match="not the weights of retinaface_resnet50"):
        load_detector("retinaface_resnet50", tmp_path)


def test_damaged_or_unsafe_files_are_refused(tmp_path):
    (tmp_path / MOBILE_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_detector("retinaface_mobile0.25", tmp_path)

    torch.save({"w": _Payload()}, tmp_path / MOBILE_FILE)      # a pickled object, refused by weights_only
    with pytest.raises(CheckpointError):
        load_detector("retinaface_mobile0.25", tmp_path)


def test_prior_boxes_layout():
    h, w = 100, 60
    priors = prior_boxes(MOBILENET_025, h, w)
    levels = [(13, 8), (7, 4), (4, 2)]                      # ceil(h / step), ceil(w / step)
    assert priors.shape == (sum(2 * a * b for a, b in levels), 4)
    assert priors[0].tolist() == [4.0, 4.0, 16.0, 16.0]
    assert priors[1].tolist() == [4.0, 4.0, 32.0, 32.0]
    assert priors[2].tolist() == [12.0, 4.0, 16.0, 16.0]   # next column
    first_l2 = 2 * 13 * 8
    assert priors[first_l2].tolist() == [8.0, 8.0, 64.0, 64.0]


def test_decoding_formulas():
    priors = torch.tensor([[50.0, 40.0, 20.0, 20.0]])
    loc = torch.tensor([[1.0, -2.0, 0.0, float(np.log(2.0)) / 0.2]])
    boxes = decode_boxes(loc, priors, (0.1, 0.2))
    # centre (50 + 0.1*20, 40 - 0.2*20) = (52, 36); size (20, 40)
    assert torch.allclose(boxes, torch.tensor([[42.0, 16.0, 62.0, 56.0]]))
    lms = decode_landmarks(torch.arange(10.0).view(1, 10), priors, (0.1, 0.2))
    assert lms.shape == (1, 5, 2)
    assert torch.allclose(lms[0, 1], torch.tensor([50.0 + 2 * 2.0, 40.0 + 3 * 2.0]))


def test_network_output_shapes_on_odd_sizes(weights_dir):
    det = load_detector("retinaface_mobile0.25", weights_dir)
    for h, w in [(1, 1), (17, 33), (64, 48)]:
        loc, scores, lms = det(det.preprocess(torch.rand(2, 3, h, w)))
        p = prior_boxes(det.config, h, w).shape[0]
        assert loc.shape == (2, p, 4) and scores.shape == (2, p) and lms.shape == (2, p, 10)


def test_matches_facexlib_retinaface_on_real_photos(weights_dir):
    fx = pytest.importorskip("facexlib.detection.retinaface")
    from PIL import Image

    ref_net = fx.RetinaFace(network_name="mobile0.25", device="cpu")
    ref_net.load_state_dict(torch.load(weights_dir / MOBILE_FILE, map_location="cpu", weights_only=True))
    ref_net.eval()
    ours = load_detector("retinaface_mobile0.25", weights_dir)
    for path in sorted(shared_path("faces", "whole").iterdir()):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        with torch.no_grad():
            ref = ref_net.detect_faces(np.ascontiguousarray(rgb[:, :, ::-1]), 0.97)   # sorted by score
        dets = detect_faces(ours, torch.from_numpy(rgb.astype(np.float32) / 255.0)[None], detect_size=0,
                            order="score")
        assert len(dets) == len(ref), path.name
        np.testing.assert_allclose(dets.boxes.numpy(), ref[:, :4], atol=0.02, err_msg=path.name)
        np.testing.assert_allclose(dets.landmarks.reshape(-1, 10).numpy(), ref[:, 5:], atol=0.02, err_msg=path.name)
        np.testing.assert_allclose(dets.scores.numpy(), ref[:, 4], atol=1e-4, err_msg=path.name)


def test_folded_batchnorm_equals_the_plain_modules_and_follows_weight_changes(weights_dir, monkeypatch):
    import vspbfr_core.face.retinaface as rf

    det = load_detector("retinaface_mobile0.25", weights_dir)
    x = det.preprocess(torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        fused = det(x)
        with monkeypatch.context() as m:
            m.setattr(rf, "_conv_bn_forward", lambda y, conv, bn: bn(conv(y)))
            plain = det(x)
        for a, b in zip(fused, plain):
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
        sd = det.state_dict()
        sd["body.stage1.0.1.weight"] = sd["body.stage1.0.1.weight"] * 0.5       # new weights, same storage
        det.load_state_dict(sd)
        changed = det(x)
        with monkeypatch.context() as m:
            m.setattr(rf, "_conv_bn_forward", lambda y, conv, bn: bn(conv(y)))
            expected = det(x)
    assert not torch.allclose(changed[0], fused[0])
    assert torch.allclose(changed[0], expected[0], atol=1e-4, rtol=1e-4)


def test_resnet50_builds_and_runs_on_random_weights():
    net = RetinaFaceDetector(RESNET50, "retinaface_resnet50").eval()
    with torch.no_grad():
        loc, scores, lms = net(net.preprocess(torch.rand(1, 3, 64, 96)))
    assert loc.shape == (1, prior_boxes(RESNET50, 64, 96).shape[0], 4) and torch.isfinite(scores).all()


def test_detector_loaded_under_inference_mode_runs() -> None:
    """ComfyUI loads and runs models inside torch.inference_mode: the BatchNorm folding cache must cope."""
    import torch

    from conftest import shared_path
    from vspbfr_core.face import detect_faces, load_detector

    folder = shared_path("weights")
    with torch.inference_mode():
        det = load_detector("retinaface_mobile0.25", [folder])
        det.to(torch.float32)
        dets = detect_faces(det, torch.rand(1, 64, 64, 3))
    assert len(dets) == 0
