"""Face parsing (vspbfr_core.face.parsing): parity with facexlib's ParseNet and BiSeNet on random weights loaded
through a saved file, strict loading, part selection, part probabilities and the file lookup.

ParseNet is built in facexlib's released 512 configuration (the key layout of parsing_parsenet.pth) but run at
128 x 128 here: it is fully convolutional and costs about 10 s per 512 x 512 crop on one CPU thread; BiSeNet runs
at 512 (about 0.6 s).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from vspbfr_core.errors import CheckpointError, InputError, ModelNotFoundError, UnsafeCheckpointError
from vspbfr_core.face import parsing as fp

pytestmark = pytest.mark.usefixtures("one_torch_thread")

facexlib_parsenet = pytest.importorskip("facexlib.parsing.parsenet")
facexlib_bisenet = pytest.importorskip("facexlib.parsing.bisenet")

ADVICE = re.compile(r"weights_only", re.IGNORECASE)


def randomize(net: torch.nn.Module, seed: int, scale: float) -> dict[str, torch.Tensor]:
    """Seeded random weights and BatchNorm statistics (means off zero, variances in [0.5, 1.5]), scaled so the
    logits stay moderate and the softmax is not saturated."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in net.state_dict().items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(1000, dtype=torch.long)
        elif k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith("running_mean"):
            out[k] = torch.randn(v.shape, generator=g) * 0.2
        elif v.dim() >= 2:
            out[k] = torch.randn(v.shape, generator=g) * (scale / v[0].numel() ** 0.5)
        elif "norm" in k or "bn" in k or ".downsample.1" in k:
            out[k] = (torch.rand(v.shape, generator=g) * 0.5 + 0.5) if k.endswith("weight") else \
                torch.randn(v.shape, generator=g) * 0.1
        else:
            out[k] = torch.randn(v.shape, generator=g) * 0.1
    net.load_state_dict(out, strict=True)
    return out


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> dict[str, tuple[torch.nn.Module, Path]]:
    """facexlib's two networks with random weights (eval mode) and the files their state dicts were saved to."""
    folder = tmp_path_factory.mktemp("parsers")
    out = {}
    for name, net, seed, scale in (("parsenet", facexlib_parsenet.ParseNet(512, 512, parsing_ch=19), 1, 1.0),
                                   ("bisenet", facexlib_bisenet.BiSeNet(num_class=19), 2, 1.4)):
        sd = randomize(net.eval(), seed, scale)
        path = folder / fp.PARSER_FILES[name]
        torch.save(sd, path)
        out[name] = (net, path)
    return out


def crops(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 1, 1, generator=g)                        # a smooth image plus noise, in [0, 1]
    ramp = torch.linspace(0, 1, size).view(1, 1, 1, size)
    return (0.6 * base + 0.3 * ramp * torch.rand(n, 3, size, 1, generator=g)
            + 0.1 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)


#----------------------------------------------------------------------------
# Parity with facexlib


def test_parsenet_matches_facexlib(nets):
    ref, path = nets["parsenet"]
    parser = fp.load_parser("parsenet", path)
    assert (parser.name, parser.weights_file, parser.size) == ("parsenet", str(path), 512)
    assert set(parser.net.state_dict()) == set(ref.state_dict())       # exactly facexlib's key names
    x = crops(2, 128, seed=3)
    with torch.no_grad():
        want = ref((x - 0.5) / 0.5)[0]                               # FaceRestoreHelper's input, first output
    small = fp.FaceParser("parsenet", parser.net, parser.weights_file, size=128)
    with torch.no_grad():
        got_logits = small.net((x - 0.5) / 0.5)
    got = small.probabilities(x)
    assert got.shape == (2, 19, 128, 128) and got.dtype == torch.float32
    assert float((got_logits - want).abs().max()) <= 1e-5
    assert float((got - torch.softmax(want, 1)).abs().max()) <= 1e-5
    assert 1.0 < float(want.std()) < 50.0                               # the comparison is not of saturated maps
    assert float(torch.softmax(want, 1).amax(1).mean()) < 0.95


def test_bisenet_matches_facexlib_at_512(nets):
    ref, path = nets["bisenet"]
    parser = fp.load_parser("bisenet", path)
    assert set(parser.net.state_dict()) == set(ref.state_dict())
    x = crops(1, 512, seed=4)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = ref((x - mean) / std)[0]                              # face-parsing.PyTorch's input, main head
        got_logits = parser.net((x - mean) / std)
    got = parser.probabilities(x)
    assert float((got_logits - want).abs().max()) <= 1e-5
    assert float((got - torch.softmax(want, 1)).abs().max()) <= 1e-5
    assert float(want.std()) > 0.5 and float(torch.softmax(want, 1).amax(1).mean()) < 0.95


def test_network_in_another_dtype_gets_its_dtype_in_and_gives_float32_out(nets):
    parser = fp.load_parser("parsenet", nets["parsenet"][1])
    small = fp.FaceParser("parsenet", parser.net, size=64)
    x = crops(1, 64, seed=5)
    want = small.probabilities(x)
    small.net.double()
    got = small.probabilities(x)
    assert got.dtype == torch.float32 and float((got - want).abs().max()) < 1e-4


#----------------------------------------------------------------------------
# Label tables


def test_label_orders_and_part_classes():
    pn, bn = fp.PARSER_LABELS["parsenet"], fp.PARSER_LABELS["bisenet"]
    assert len(pn) == len(bn) == 19 and set(pn) == set(bn)
    assert pn[2] == "nose" and bn[2] == "l_brow" and pn[13] == "hair" and bn[17] == "hair"
    assert fp.part_classes("parsenet", "nose") == (2,) and fp.part_classes("bisenet", "nose") == (10,)
    assert fp.part_classes("parsenet", "glasses") == (3,) and fp.part_classes("bisenet", "glasses") == (6,)
    assert fp.part_classes("parsenet", "mouth") == (10,) and fp.part_classes("bisenet", "mouth") == (11,)
    assert fp.part_classes("bisenet", "lips") == (12, 13) and fp.part_classes("parsenet", "lips") == (11, 12)
    assert fp.part_classes("parsenet") == tuple(range(1, 13))
    assert fp.part_classes("bisenet") == (1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13)
    # facexlib's paste mask (MASK_COLORMAP, parsenet order) pastes 1-13 and 15: ours without hair and earrings
    facexlib_pasted = {pn[i] for i in (*range(1, 14), 15)}
    ours = {pn[i] for i in fp.part_classes("parsenet")}
    assert facexlib_pasted - ours == {"hair", "ear_r"} and ours < facexlib_pasted
    never = {label for part in fp.NEVER_PASTED for label in fp.NEVER_PASTED_LABELS[part]}
    face = {label for part in fp.FACE_PARTS for label in fp.PART_LABELS[part]}
    assert never.isdisjoint(face) and never | face == set(pn)


#----------------------------------------------------------------------------
# parse_parts


def test_parse_parts_default_all_and_custom():
    assert fp.DEFAULT_PARTS == fp.FACE_PARTS
    assert fp.parse_parts("") == fp.parse_parts(None) == fp.parse_parts("default") == fp.DEFAULT_PARTS
    assert fp.parse_parts("all") == fp.parse_parts(" ALL ") == fp.FACE_PARTS
    assert fp.parse_parts("lips, eyes,skin") == ("skin", "eyes", "lips")            # FACE_PARTS order
    assert fp.parse_parts(["nose", "eye+brow", "nose"]) == ("brows", "eyes", "nose")  # aliases, once each
    assert fp.parse_parts(fp.DEFAULT_PARTS) == fp.DEFAULT_PARTS


@pytest.mark.parametrize("text", ["skin,hair", "neck", "Earrings", "ear_r", "cloth", "background", "hat"])
def test_parse_parts_refuses_never_pasted_names_saying_why(text):
    with pytest.raises(InputError, match="cannot be pasted") as info:
        fp.parse_parts(text)
    assert "never" in str(info.value) and "skin" in str(info.value)


@pytest.mark.parametrize("text", ["skin,cheeks", "l_eye", ["eyes", 3]])
def test_parse_parts_refuses_unknown_names(text):
    with pytest.raises(InputError, match="unknown face part|must be names") as info:
        fp.parse_parts(text)
    assert "skin" in str(info.value)


#----------------------------------------------------------------------------
# Probabilities


def test_part_probability_at_256_is_the_sum_of_the_parts_classes(nets):
    parser = fp.load_parser("bisenet", nets["bisenet"][1])                  # runs at 512: resized in and out
    x = crops(2, 256, seed=6)
    prob = parser.probabilities(x)
    assert prob.shape == (2, 19, 256, 256) and prob.dtype == torch.float32
    assert float((prob.sum(1) - 1).abs().max()) < 1e-5 and float(prob.min()) >= 0
    for parts in (fp.DEFAULT_PARTS, "eyes,lips", "nose"):
        face = parser.part_probability(x, parts)
        assert face.shape == (2, 256, 256) and face.dtype == torch.float32
        assert float(face.min()) >= 0.0 and float(face.max()) <= 1.0
        want = prob[:, list(fp.part_classes("bisenet", parts))].sum(1)
        assert float((face - want).abs().max()) < 1e-5
    assert float(parser.part_probability(x, "nose").std()) > 0                  # not a constant map
    assert parser.probabilities(x[:0]).shape == (0, 19, 256, 256)


def test_bad_crops_are_input_errors(nets):
    parser = fp.FaceParser("parsenet", fp.load_parser("parsenet", nets["parsenet"][1]).net, size=64)
    for bad in (torch.zeros(1, 1, 64, 64), torch.zeros(3, 64, 64), torch.zeros(1, 3, 64, 64, dtype=torch.uint8),
                "crops"):
        with pytest.raises(InputError):
            parser.probabilities(bad)
    with pytest.raises(InputError, match="multiples of 16"):
        fp.FaceParser("parsenet", parser.net, size=100)
    with pytest.raises(InputError, match="unknown face part"):
        parser.part_probability(crops(1, 64), "whiskers")


#----------------------------------------------------------------------------
# Strict loading


@pytest.fixture(scope="module")
def bisenet_sd(nets) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in nets["bisenet"][0].state_dict().items()}


def _refused(path: Path, match: str, name: str = "bisenet") -> CheckpointError:
    with pytest.raises(CheckpointError, match=match) as info:
        fp.load_parser(name, path)
    chain = []
    exc: BaseException | None = info.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__
    assert not any(ADVICE.search(m) for m in chain), chain
    assert str(path.name) in str(info.value)
    return info.value


def test_strict_loading_refuses_missing_extra_reshaped_and_nan(bisenet_sd, tmp_path):
    sd = dict(bisenet_sd)
    del sd["ffm.conv1.weight"]
    torch.save(sd, tmp_path / "missing.pth")
    _refused(tmp_path / "missing.pth", r"1 missing keys.*ffm\.conv1\.weight")

    sd = dict(bisenet_sd, **{"conv_out.extra": torch.zeros(3)})
    torch.save(sd, tmp_path / "extra.pth")
    _refused(tmp_path / "extra.pth", r"1 unexpected keys.*conv_out\.extra")

    sd = dict(bisenet_sd, **{"conv_out.conv_out.weight": torch.zeros(18, 256, 1, 1)})
    torch.save(sd, tmp_path / "shape.pth")
    _refused(tmp_path / "shape.pth", r"shape mismatches.*conv_out\.conv_out\.weight")

    bad = bisenet_sd["cp.resnet.layer3.0.conv1.weight"].clone()
    bad[0, 0, 0, 0] = float("nan")
    torch.save(dict(bisenet_sd, **{"cp.resnet.layer3.0.conv1.weight": bad}), tmp_path / "nan.pth")
    _refused(tmp_path / "nan.pth", r"NaN or infinite.*cp\.resnet\.layer3\.0\.conv1\.weight")

    var = bisenet_sd["ffm.convblk.bn.running_var"].clone()
    var[0] = -1.0
    torch.save(dict(bisenet_sd, **{"ffm.convblk.bn.running_var": var}), tmp_path / "var.pth")
    _refused(tmp_path / "var.pth", r"negative variance")


def test_the_other_networks_file_is_named(nets):
    err = _refused(nets["bisenet"][1], r"does not fit the parsenet", name="parsenet")
    assert "holds the bisenet network" in str(err)


def test_counters_may_be_absent_and_module_prefix_is_stripped(bisenet_sd, tmp_path):
    sd = {"module." + k: v for k, v in bisenet_sd.items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": sd}, tmp_path / "wrapped.pth")
    parser = fp.load_parser("bisenet", tmp_path / "wrapped.pth")
    assert torch.equal(parser.net.state_dict()["ffm.conv1.weight"], bisenet_sd["ffm.conv1.weight"])
    assert not parser.net.training and not any(p.requires_grad for p in parser.net.parameters())


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_a_pickle_that_would_run_code_is_refused_and_never_runs(bisenet_sd, tmp_path):
    marker = tmp_path / "payload-ran"
    torch.save(dict(bisenet_sd, payload=_Payload(str(marker))), tmp_path / "evil.pth")
    with pytest.raises(UnsafeCheckpointError, match="could run code"):
        fp.load_parser("bisenet", tmp_path / "evil.pth")
    _refused(tmp_path / "evil.pth", "could run code")
    assert not marker.exists()


def test_unknown_name_and_missing_file(tmp_path, nets):
    with pytest.raises(InputError, match="unknown face-parsing network 'nonsense'"):
        fp.load_parser("nonsense", nets["parsenet"][1])
    with pytest.raises(ModelNotFoundError):
        fp.load_parser("parsenet", tmp_path / "absent.pth")
    (tmp_path / "garbage.pth").write_bytes(b"\x00not a checkpoint" * 100)
    _refused(tmp_path / "garbage.pth", ".", name="parsenet")


#----------------------------------------------------------------------------
# Finding the file


def test_find_parser_file_and_its_missing_file_message(tmp_path):
    from vspbfr_core.paths import HostHints, set_host_hints

    empty = tmp_path / "empty"
    with pytest.raises(ModelNotFoundError) as info:
        fp.find_parser_file("parsenet", [empty, tmp_path])
    msg = str(info.value)
    assert "parsing_parsenet.pth" in msg and str(empty) in msg and str(tmp_path) in msg
    assert f"vspbfr download --models {empty} --only parsing`" in msg
    with pytest.raises(ModelNotFoundError, match="--only parsing --parser bisenet"):
        fp.find_parser_file("bisenet", tmp_path)
    (tmp_path / "parsing_bisenet.pth").write_bytes(b"x")
    assert fp.find_parser_file("bisenet", [empty, tmp_path]) == tmp_path / "parsing_bisenet.pth"
    with pytest.raises(InputError):
        fp.find_parser_file("nonsense", tmp_path)
    # a host that only knows the identity command gets the same command with --only parsing
    set_host_hints(HostHints(download_identity=lambda folder: f'cd X && py -m vspbfr_core download --models '
                                                             f'"{folder}" --only identity'))
    with pytest.raises(ModelNotFoundError, match=r'py -m vspbfr_core download --models ".*" --only parsing`'):
        fp.find_parser_file("parsenet", empty)


def test_importing_the_face_package_imports_no_torch():
    code = ("import sys, vspbfr_core.face as f; "
            "names = {'PARSERS', 'FACE_PARTS', 'parse_parts', 'FaceParser', 'load_parser', 'find_parser_file'}; "
            "assert names <= set(f.__all__), names - set(f.__all__); "
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
    from vspbfr_core import face

    assert face.load_parser is fp.load_parser and face.PARSER_FILES == fp.PARSER_FILES
