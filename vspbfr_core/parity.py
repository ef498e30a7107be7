"""Parity check against golden fixtures produced by the official VSPBFR code.

Usage:
    python -m vspbfr_core.parity FIXTURE_DIR... [--dtype float64 float32 bfloat16 float16] [--device cuda]
                                 [--tf32] [--quiet] [--save OUT.safetensors]
    python -m vspbfr_core.parity --write-weights MANIFEST -o DIR

A fixture directory holds ``golden_f64.safetensors``, ``tapes.safetensors`` + ``tapes.json`` (every
random draw of the official run, in consumption order) and ``parity_stats.json``; the weights are
regenerated from ``manifest.json`` (in the fixture directory or its parent) by the documented rule.
Three fixture kinds exist: a full pipeline run (golden ``e4e.w_plus``), the DDPM alone (``condi_in``)
and the restoration network alone (inputs ``feats`` + ``pre_latent``).  Every golden tensor is
compared and printed as ``NAME max_abs=... ref_absmax=...``; the exit status is 1 when any tensor
exceeds the tolerance (float64: 1e-9 absolute; float32: 10x the fixture's measured float32 error).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .checkpoints import OFFICIAL_FILES, LoadedCheckpoint, load_state_dict_kind
from .model import RestoreNoise, VSPBFRModel
from .wplus_diffusion import DDPMSchedule, sample_wplus

F64_TOLERANCE = 1e-9
F32_FACTOR = 10.0
# Half precision (style encoder, W+ diffusion and mapping MLP in float32; feature bank and restoration network in
# half): max |restored - golden| in [-1, 1] units (halve it for [0, 1] image units), about 2-3x what was measured:
#   bfloat16, CPU (torch 2.14):          restoration_alone 2.8e-2, case_a 3.9e-2
#   bfloat16, CUDA H100 (torch 2.11):    restoration_alone 2.5e-2, case_a 3.2e-2
#   float16,  CUDA H100 (torch 2.11):    restoration_alone 3.0e-3, case_a 4.2e-3
# (float32 on that H100 without TF32: 2.9e-6 / 2.1e-4, inside the float32 tolerances; with the TF32 opt-in for the
# bank and restoration: 1.2e-3 / 1.6e-3.)  float16 on CPU is refused by the pipeline (slow emulation).
HALF_TOLERANCE: dict[torch.dtype, dict[str, float]] = {
    torch.bfloat16: {"restoration": 0.06, "full": 0.08},
    torch.float16: {"restoration": 0.01, "full": 0.015},
}
MANIFEST_NAMES = {"e4e": "style_encoder_decoder", "code_diffuser": "code_diffuser", "restoration": "restoration_net"}

#----------------------------------------------------------------------------
# Weight regeneration (regen.md)


def regen_tensor(entry: dict[str, Any]) -> torch.Tensor:
    shape, dtype = tuple(entry["shape"]), getattr(torch, entry["dtype"])
    if entry["kind"] == "const":
        return torch.full(shape, entry["mean"], dtype=dtype)
    if entry["kind"] == "values":
        return torch.tensor(entry["values"], dtype=torch.float64).to(dtype).reshape(shape)
    if entry["kind"] != "normal":
        raise ValueError(f"unknown regeneration kind {entry['kind']!r} for {entry.get('key')}")
    g = torch.Generator().manual_seed(int(entry["seed"]))
    return (entry["mean"] + entry["std"] * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)


def find_manifest(fixture_dir: Path) -> Path:
    for cand in (fixture_dir / "manifest.json", fixture_dir.parent / "manifest.json"):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"no manifest.json in {fixture_dir} or its parent")


def regen_dict(manifest: dict[str, Any], name: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    d = manifest["dicts"][name]
    sd = {e["key"]: regen_tensor(e) for e in d["entries"]}
    extra = {e["key"]: regen_tensor(e) for e in d.get("top_level", [])}
    return sd, extra


_REGEN_CACHE: dict[tuple[str, str], dict[str, torch.Tensor]] = {}


def load_manifest_networks(manifest: dict[str, Any], which: tuple[str, ...], source: str,
                           cache: bool = False) -> dict[str, LoadedCheckpoint]:
    """Regenerate and strictly load the manifest's networks through the regular loader.

    ``cache=True`` keeps the regenerated state dicts of the last manifest ``source`` in memory (about
    1.7 GB for all three) and hands each network a copy, so several precisions or fixtures in one process
    regenerate once.
    """
    out = {}
    if cache and any(k[0] != source for k in _REGEN_CACHE):
        _REGEN_CACHE.clear()
    for name in which:
        sd = _REGEN_CACHE.get((source, name)) if cache else None
        if sd is None:
            sd, extra = regen_dict(manifest, name)
            sd.update(extra)
            if cache:
                _REGEN_CACHE[(source, name)] = sd
        if cache:
            sd = {k: v.clone() for k, v in sd.items()}
        out[name] = load_state_dict_kind(sd, MANIFEST_NAMES[name], f"{source}:{name}")  # type: ignore[arg-type]
    return out


def write_official_checkpoints(manifest_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write the regenerated weights as the three official-layout checkpoint files."""
    manifest = json.loads(Path(manifest_path).read_text())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, kind in MANIFEST_NAMES.items():
        sd, extra = regen_dict(manifest, name)
        if name == "e4e":
            obj: dict[str, Any] = {"state_dict": sd, "latent_avg": extra["latent_avg"],
                                   "opts": dict(manifest["dicts"]["e4e"].get("opts", {}))}
        elif name == "code_diffuser":
            obj = {"att_mapper": sd, "args": argparse.Namespace(size=256, iter=0, note="regenerated from manifest"),
                   "iter": 0, "best_path": "", "best_fid": 0.0}
        else:
            obj = {"g_ema": sd, "args": argparse.Namespace(size=512, channel_multiplier=2, note="regenerated from manifest"),
                   "ada_aug_p": 0.0, "iter": 0}
        dst = out_dir / OFFICIAL_FILES[kind]  # type: ignore[index]
        tmp = dst.with_name(dst.name + ".part")
        torch.save(obj, tmp)
        os.replace(tmp, dst)
        written.append(dst)
    return written


#----------------------------------------------------------------------------
# Fixture reading


@dataclass
class Tapes:
    mixing_draw: float | None = None
    z: torch.Tensor | None = None
    x_T: torch.Tensor | None = None
    stylegan: list[torch.Tensor] = field(default_factory=list)
    inject_index: int | None = None
    encoder: list[torch.Tensor] = field(default_factory=list)
    decoder: list[torch.Tensor] = field(default_factory=list)
    unused: int = 0


def read_tapes(fixture: Path) -> tuple[Tapes, dict[str, Any]]:
    from safetensors.torch import load_file

    meta = json.loads((fixture / "tapes.json").read_text())
    tensors = load_file(str(fixture / "tapes.safetensors"))
    tapes = Tapes()
    for t in sorted(meta["tapes"], key=lambda t: t["order"]):
        key, kind = t["key"], t["kind"]
        value = tensors.get(key)
        if kind == "py_random":
            tapes.mixing_draw = float(t["value"])
        elif kind == "py_randint":
            tapes.inject_index = int(t["value"])
        elif "UNUSED" in key:
            tapes.unused += 1
        elif ".mixing_noise." in key:
            tapes.z = value
        elif key.endswith(".x_T"):
            tapes.x_T = value
        elif ".e4e.decoder." in key:
            tapes.stylegan.append(value)
        elif ".restore.encoder_convs." in key:
            tapes.encoder.append(value)
        elif ".restore.conv1." in key or ".restore.convs." in key:
            tapes.decoder.append(value)
        else:
            raise ValueError(f"{fixture}: unrecognised tape {key!r}")
    return tapes, meta


def image_to_input(path: Path) -> torch.Tensor:
    """PNG -> ``ToTensor`` + ``Normalize(0.5, 0.5)`` in float32, ``[1, 3, H, W]``."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    x = torch.from_numpy(arr).permute(2, 0, 1).float().div(255.0)
    return ((x - 0.5) / 0.5)[None]


def fixture_kind(golden_keys: set[str], inputs: dict[str, Any]) -> str:
    if "e4e.w_plus" in golden_keys:
        return "full"
    if "condi_in" in golden_keys or "condi_in" in inputs:
        return "ddpm"
    if "pre_latent" in inputs or "pre_latent" in golden_keys:
        return "restoration"
    raise ValueError("cannot tell the fixture kind (no e4e.w_plus, condi_in or pre_latent)")


#----------------------------------------------------------------------------
# Running the stages


def _stats(prefix: str, x: torch.Tensor, pool: int) -> Iterator[tuple[str, torch.Tensor]]:
    pooled = F.adaptive_avg_pool2d(x, pool) if x.shape[-1] > pool else x
    suffix = f"pool{pool}"
    yield f"{prefix}.{suffix}", pooled
    yield f"{prefix}.mean", x.mean(dim=(2, 3))
    yield f"{prefix}.std", x.std(dim=(2, 3), correction=0)


def _ddpm_outputs(out: dict[str, torch.Tensor], with_x_in: bool) -> Any:
    step = [0]

    def callback(t: int, x_t: torch.Tensor, x0: torch.Tensor, x_next: torch.Tensor) -> None:
        j = step[0]
        out[f"ddpm.step{j}.t"] = torch.tensor([t], dtype=torch.long)
        if with_x_in:
            out[f"ddpm.step{j}.x_in"] = x_t
        out[f"ddpm.step{j}.x0_pred"] = x0
        out[f"ddpm.step{j}.x_out"] = x_next
        step[0] += 1
    return callback


def _mixing_noise(tapes: Tapes) -> torch.Tensor:
    """The official ``noise`` list as one ``[n, B, w_dim]`` tensor."""
    assert tapes.z is not None
    return tapes.z if tapes.z.ndim == 3 else tapes.z[None]


def _restore_noise(tapes: Tapes, batch: int, n_latent: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    assert tapes.z is not None
    mixing = tapes.z.ndim == 3 and tapes.z.shape[0] == 2
    if mixing:
        if tapes.inject_index is None:
            raise ValueError("two noise styles but no inject index tape")
        return tapes.z[0], tapes.z[1], torch.full((batch,), tapes.inject_index, dtype=torch.long)
    return tapes.z.reshape(batch, -1), None, None


def run_fixture(fixture: Path, dtype: torch.dtype, device: torch.device | str = "cpu",
                tf32: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], str]:
    """Run our implementation on one fixture; returns (ours, golden, kind).

    On CUDA, float32 runs with TF32 convolutions and matmuls off unless ``tf32`` (PyTorch enables TF32
    convolutions by default; they round inputs to 10 mantissa bits, which is a precision choice of its own).
    """
    device = torch.device(device)
    if device.type == "cuda":
        # deterministic cuDNN algorithms too: the run checks that its stage-by-stage and whole-network results
        # are identical, which nondeterministic (atomic-add) convolution algorithms do not guarantee
        cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
        saved = cudnn.allow_tf32, matmul.allow_tf32, cudnn.deterministic, cudnn.benchmark
        cudnn.allow_tf32 = matmul.allow_tf32 = tf32
        cudnn.deterministic, cudnn.benchmark = True, False
        try:
            return _run_fixture(fixture, dtype, device, tf32)
        finally:
            cudnn.allow_tf32, matmul.allow_tf32, cudnn.deterministic, cudnn.benchmark = saved
    return _run_fixture(fixture, dtype, device, tf32)


def _run_fixture(fixture: Path, dtype: torch.dtype, device: torch.device, tf32: bool
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], str]:
    from safetensors.torch import load_file

    golden = load_file(str(fixture / "golden_f64.safetensors"))
    manifest_path = find_manifest(fixture)
    manifest = json.loads(manifest_path.read_text())
    tapes, meta = read_tapes(fixture)
    inputs = meta.get("inputs", {})
    kind = fixture_kind(set(golden), inputs)
    ours: dict[str, torch.Tensor] = {}
    cast = lambda t: t.to(device, dtype)  # noqa: E731
    wide_dt = torch.promote_types(dtype, torch.float32)        # the W+ path never runs in half
    wide = lambda t: t.to(device, wide_dt)  # noqa: E731

    with torch.inference_mode():
        if kind == "ddpm":
            nets = load_manifest_networks(manifest, ("code_diffuser",), str(manifest_path), cache=True)
            cd = nets["code_diffuser"].networks["code_diffuser"].to(device, wide_dt)
            schedule = DDPMSchedule.from_config(cd.config)
            cond = wide(regen_tensor(inputs["condi_in"]) if "condi_in" in inputs else golden["condi_in"])
            ours["condi_in"] = cond
            for name in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "posterior_mean_coef1",
                         "posterior_mean_coef2", "posterior_variance"):
                ours[f"schedule.{name}"] = getattr(schedule, name).to(wide_dt)
            assert tapes.x_T is not None
            ours["ddpm.x_T"] = wide(tapes.x_T)
            ours["ddpm.out"] = sample_wplus(cd, cond, wide(tapes.x_T), schedule, _ddpm_outputs(ours, True))
        elif kind == "restoration":
            nets = load_manifest_networks(manifest, ("restoration",), str(manifest_path), cache=True)
            rn = nets["restoration"].networks["restoration_net"].to(device, dtype)
            rn.style.to(device, wide_dt)       # the mapping MLP never runs in half
            root = manifest_path.parent
            # the layout the pipeline runs in (NHWC; float64 stays NCHW, see VSPBFRModel.memory_format)
            nhwc = torch.channels_last if dtype != torch.float64 else torch.contiguous_format
            faces = cast(image_to_input(root / inputs["input"])).contiguous(memory_format=nhwc)
            bank = [cast(regen_tensor(e)).contiguous(memory_format=nhwc) for e in inputs["feats"]]
            prompts = cast(regen_tensor(inputs["pre_latent"]))
            ours["pre_latent"] = prompts
            ours["mixing_noise"] = _mixing_noise(tapes)
            z1, z2, inject = _restore_noise(tapes, faces.shape[0], rn.config.n_latent)
            _run_restoration(rn, faces, bank, prompts, wide(z1), None if z2 is None else wide(z2),
                             None if inject is None else inject.to(device),
                             [cast(t) for t in tapes.encoder], [cast(t) for t in tapes.decoder], ours)
        else:
            nets = load_manifest_networks(manifest, ("e4e", "code_diffuser", "restoration"), str(manifest_path),
                                          cache=True)
            model = VSPBFRModel(nets["e4e"].networks["style_encoder"], nets["e4e"].networks["stylegan"],
                                nets["code_diffuser"].networks["code_diffuser"],
                                nets["restoration"].networks["restoration_net"]).set_precision(dtype, device)
            model.allow_tf32 = tf32      # the pipeline's TF32 opt-in: feature bank and restoration only
            faces = golden["input"]
            if (fixture / "input.png").is_file():
                png = image_to_input(fixture / "input.png")
                if not torch.equal(png, faces):
                    raise ValueError(f"{fixture}: input.png does not reproduce the golden 'input' tensor")
            ours["input"] = faces
            faces = wide(faces)     # the encoder never runs in half
            batch = faces.shape[0]
            z1, z2, inject = _restore_noise(tapes, batch, model.restoration_net.config.n_latent)
            ours["mixing_noise"] = _mixing_noise(tapes)
            n_bank = len(model.stylegan.noise_shapes(batch, model.num_bank_features))
            noise = RestoreNoise(z1, z2, inject, tapes.x_T, tapes.stylegan[:n_bank], tapes.encoder, tapes.decoder,  # type: ignore[arg-type]
                                 tapes.stylegan[n_bank:]).to(faces.device, dtype)
            low = lambda t: t.to(model.compute_dtype)  # noqa: E731
            # 1. style encoder
            ws = model.encode(faces)
            ours["e4e.w_plus"] = ws
            # 2. code diffuser
            ours["ddpm.x_T"] = noise.x_T
            prompts = model.diffuse(ws, noise.x_T, _ddpm_outputs(ours, False))
            ours["ddpm.out"] = prompts
            prompts = low(prompts)
            # 3. feature bank: the full render (for the style_sample and 1024 goldens) ...
            feats_all, img = model.stylegan(prompts, noise.stylegan + noise.stylegan_extra, None, return_image=True,
                                            channels_last=model._nhwc(prompts))
            for k, f in enumerate(feats_all):
                ours.update(_stats(f"stylegan.feat{k}", f, 16))
            assert img is not None
            sample = F.adaptive_avg_pool2d(img, model.resolution)
            ours["stylegan.style_sample.pool128"] = F.adaptive_avg_pool2d(sample, 128)
            ours["stylegan.style_sample.mean"] = sample.mean(dim=(2, 3))
            ours["stylegan.style_sample.std"] = sample.std(dim=(2, 3), correction=0)
            # ... and the truncated bank the restoration actually uses
            bank, _ = model.feature_bank(prompts, noise.stylegan)
            for a, b in zip(bank, feats_all):
                if not torch.equal(a, b):
                    raise AssertionError("truncated feature bank differs from the full render")
            # 4. restoration
            _run_restoration(model.restoration_net, model.memory_format(low(faces)), bank, prompts, noise.z1, noise.z2,
                             noise.inject_index,
                             noise.encoder, noise.decoder, ours)
            full = model(faces, noise)
            if not torch.equal(full, ours["restored"]):
                raise AssertionError("VSPBFRModel.forward differs from the stage-by-stage run")
    return ours, golden, kind


def _run_restoration(rn: Any, faces: torch.Tensor, bank: list[torch.Tensor], prompts: torch.Tensor, z1: torch.Tensor,
                     z2: torch.Tensor | None, inject: torch.Tensor | None, enc_noise: list[torch.Tensor],
                     dec_noise: list[torch.Tensor], ours: dict[str, torch.Tensor]) -> None:
    w1 = rn.map_noise(z1)
    ours["restore.mapped_style0"] = w1
    w2 = None
    if z2 is not None:
        w2 = rn.map_noise(z2)
        ours["restore.mapped_style1"] = w2
    latent = rn.style_latent(prompts, w1, w2, inject, faces.dtype)
    enc = rn.encode(faces, latent, enc_noise)
    ours["restore.x_global"] = enc.x_global
    for k, f in enumerate(enc.features):
        ours.update(_stats(f"restore.enc_feat{k}", f, 8))
    ours["restored"] = rn.decode(enc, bank, latent, dec_noise)
    direct = rn(faces, bank, prompts, z1, z2, inject, enc_noise, dec_noise)
    if not torch.equal(direct, ours["restored"]):
        raise AssertionError("RestorationNet.forward differs from encode + decode")


#----------------------------------------------------------------------------
# Comparison


@dataclass
class Comparison:
    name: str
    max_abs: float
    ref_absmax: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return math.isfinite(self.max_abs) and self.max_abs <= self.tolerance

    def line(self) -> str:
        if self.tolerance == math.inf:
            return f"{self.name} max_abs={self.max_abs:.3e} ref_absmax={self.ref_absmax:.3e} (reported only)"
        return (f"{self.name} max_abs={self.max_abs:.3e} ref_absmax={self.ref_absmax:.3e} "
                f"tol={self.tolerance:.1e} {'ok' if self.ok else 'FAIL'}")


def compare(ours: dict[str, torch.Tensor], golden: dict[str, torch.Tensor], stats: dict[str, Any],
            dtype: torch.dtype, kind: str = "full") -> list[Comparison]:
    f32_stats = stats.get("f32_vs_f64", {})
    out = []
    for name in sorted(golden):
        ref = golden[name].double()
        if name not in ours:
            out.append(Comparison(name, math.inf, float(ref.abs().max()), 0.0))
            continue
        mine = ours[name].detach().double().cpu()
        max_abs = float((mine - ref).abs().max()) if mine.shape == ref.shape else math.inf
        if dtype == torch.float64:
            tol = F64_TOLERANCE
        elif dtype in HALF_TOLERANCE and kind != "ddpm":
            # half precision: the restored image is checked, intermediate tensors are reported only
            tol = HALF_TOLERANCE[dtype][kind] if name == "restored" else math.inf
        else:
            measured = f32_stats.get(name, {}).get("max_abs")
            tol = F32_FACTOR * measured if measured is not None else 1e-4 * max(1.0, float(ref.abs().max()))
            tol = max(tol, 1e-7 * float(ref.abs().max()))
        out.append(Comparison(name, max_abs, float(ref.abs().max()), tol))
    return out


def check_fixture(fixture: str | os.PathLike[str], dtype: torch.dtype = torch.float64,
                  save: str | os.PathLike[str] | None = None, device: torch.device | str = "cpu",
                  tf32: bool = False) -> tuple[list[Comparison], str]:
    fixture = Path(fixture)
    ours, golden, kind = run_fixture(fixture, dtype, device, tf32)
    stats_path = fixture / "parity_stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    if save is not None:
        from safetensors.torch import save_file
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in ours.items()}, str(save),
                  metadata={"fixture": str(fixture), "dtype": str(dtype)})
    return compare(ours, golden, stats, dtype, kind), kind


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vspbfr_core.parity", description=__doc__.split("\n")[0])
    p.add_argument("fixture", nargs="*", help="fixture directories (golden_f64.safetensors, tapes.*)")
    p.add_argument("--dtype", nargs="+", choices=("float64", "float32", "bfloat16", "float16"), default=["float64"],
                   help="float64: the pass/fail parity claim; float32: smoke check; bfloat16/float16: the half "
                        "precision paths (W+ diffusion and mapping stay float32), checked on `restored` only; "
                        "several run one after the other")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps (default cpu)")
    p.add_argument("--tf32", action="store_true", help="CUDA float32: allow TF32 convolutions/matmuls (default off)")
    p.add_argument("--quiet", action="store_true", help="print the restored tensor and the summary line only")
    p.add_argument("--save", help="write our outputs, under the fixture's tensor names, to this .safetensors file "
                                  "(one fixture and one dtype only)")
    p.add_argument("--write-weights", metavar="MANIFEST", help="write the regenerated weights as official .pt files")
    p.add_argument("-o", "--out", help="output directory for --write-weights")
    args = p.parse_args(argv)
    if args.write_weights:
        if not args.out:
            p.error("--write-weights needs -o DIR")
        for path in write_official_checkpoints(args.write_weights, args.out):
            print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
        return 0
    if not args.fixture:
        p.error("give a fixture directory (or --write-weights MANIFEST -o DIR)")
    if args.save and (len(args.fixture) > 1 or len(args.dtype) > 1):
        p.error("--save takes one fixture and one --dtype")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    status = 0
    for fixture in args.fixture:
        for name in args.dtype:
            results, kind = check_fixture(fixture, getattr(torch, name), args.save, device, args.tf32)
            for r in results:
                if not args.quiet or r.name == "restored" or not r.ok:
                    print(r.line())
            failed = [r.name for r in results if not r.ok]
            where = f"{device}{' tf32' if args.tf32 and device.type == 'cuda' and name == 'float32' else ''}"
            print(f"{fixture}: {kind} fixture, {len(results)} tensors, {len(failed)} over tolerance ({name}, {where})",
                  flush=True)
            status |= bool(failed)
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
