"""The four VSPBFR networks wired together, with every random draw explicit.

Paper: VSPBFR, Pattern Recognition 2025, Sec. 3 (Fig. 2: style encoder -> code diffuser -> StyleGAN2
feature bank -> restoration auto-encoder).  This module restores *aligned* faces; detection,
alignment and paste-back live in ``vspbfr_core.face``.

Stages, each callable alone:
1. ``encode``: aligned faces ``[F, 3, R, R]`` in [-1, 1] -> encoder W+ ``[F, 18, 512]``;
2. ``diffuse``: W+ -> visual style prompt W+ (4-step DDPM from ``x_T``);
3. ``feature_bank``: prompt -> StyleGAN2 features at 4..R (the 1024 level and RGB skipped);
4. ``restore``: faces + bank + prompt + random codes -> restored faces ``[F, 3, R, R]`` (unclamped).

Randomness: ``draw_noise`` draws everything one face needs from that face's generator, in the
official consumption order (mixing decision, z, x_T, StyleGAN noise, inject index, encoder noise,
decoder noise); faces drawn separately are concatenated, so a face's result does not depend on the
batch it is in.

Non-finite values: every stage checks its output with one ``isfinite(...).all()`` reduction (values are
never changed).  NaN or inf from finite inputs raises :class:`~vspbfr_core.errors.NonFiniteError` naming the
stage, the network and the file its weights came from (``weight_files``; ``"(weights given in memory)"``
for networks built in Python), so damaged weights or a float16 overflow never become a black or white face.
Non-finite *inputs* to a stage are an :class:`~vspbfr_core.errors.InputError` instead.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from .encoder import StyleEncoder
from .errors import InputError, NonFiniteError
from .restorer import RestorationNet
from .rng import rand_scalar, randint_scalar, randn
from .stylegan2 import StyleGAN2Synthesis
from .wplus_diffusion import CodeDiffuser, DDPMSchedule, StepCallback, sample_wplus

__all__ = ["VSPBFRModel", "RestoreNoise", "MIXING_PROBABILITY", "exact_float32", "all_finite", "IN_MEMORY",
           "NETWORK_NAMES"]

MIXING_PROBABILITY = 0.5   # official mixing_noise(B, 512, 0.5)
IN_MEMORY = "(weights given in memory)"      # weight_files entry of a network not loaded from a file
NETWORK_NAMES = {"style_encoder": "style encoder", "code_diffuser": "code diffuser (W+ diffusion)",
                 "stylegan": "StyleGAN2 decoder (feature bank)", "restoration_net": "restoration network"}


def all_finite(*tensors: torch.Tensor | None) -> bool:
    """Whether every value of every tensor is finite: one reduction per tensor and one host sync in all."""
    flags = [torch.isfinite(t).all() for t in tensors if t is not None and t.numel()]
    if not flags:
        return True
    return bool(flags[0] if len(flags) == 1 else torch.stack(flags).all())


def _count_bad(tensors: list[torch.Tensor]) -> tuple[int, int]:
    bad = sum(int((~torch.isfinite(t)).sum()) for t in tensors)
    return bad, sum(t.numel() for t in tensors)


@contextlib.contextmanager
def exact_float32(enabled: bool = True) -> Iterator[None]:
    """float32 convolutions and matmuls in full float32 (no TF32) inside the block; the caller's settings after.

    PyTorch lets cuDNN use TF32 (10-bit mantissa inputs) for float32 convolutions by default, and hosts such as
    A1111 turn it on for matmuls too.  On the parity fixture TF32 moved the encoder's W+ by 1.2e-3 and, through
    the W+ diffusion, the restored face by 0.23 (float32 without TF32: 2e-4), so the W+ path always runs
    without it.  (Only the process-wide flags are touched; CPU work is unaffected by them.)
    """
    if not enabled:
        yield
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = False
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


@dataclass
class RestoreNoise:
    """Every random input of one restoration, batch-major.

    ``z2``/``inject_index`` are ``None`` when no face of the batch uses style mixing; otherwise
    ``inject_index [F]`` holds ``n_latent`` for faces without mixing (all rows from ``z1``).
    """
    z1: torch.Tensor                                   # [F, w_dim]
    z2: torch.Tensor | None                            # [F, w_dim]
    inject_index: torch.Tensor | None                  # [F] long
    x_T: torch.Tensor                                  # [F, num_ws, w_dim]
    stylegan: list[torch.Tensor]                       # [F, 1, r, r] per consumed StyleGAN conv
    encoder: list[torch.Tensor]                        # [F, 1, r, r] per restoration encoder layer
    decoder: list[torch.Tensor]                        # [F, 1, r, r] per restoration decoder layer
    stylegan_extra: list[torch.Tensor] = field(default_factory=list)   # only for style_sample

    @staticmethod
    def cat(parts: list[RestoreNoise], n_latent: int) -> RestoreNoise:
        """Concatenate per-face noise; faces without mixing get ``inject_index = n_latent``."""
        if len(parts) == 1:
            return parts[0]
        z1 = torch.cat([p.z1 for p in parts])
        z2 = inject = None
        if any(p.z2 is not None for p in parts):
            z2 = torch.cat([p.z2 if p.z2 is not None else torch.zeros_like(p.z1) for p in parts])
            inject = torch.cat([p.inject_index if p.inject_index is not None
                                else torch.full((p.z1.shape[0],), n_latent, dtype=torch.long) for p in parts])
        extra_lens = {len(p.stylegan_extra) for p in parts}
        return RestoreNoise(
            z1, z2, inject, torch.cat([p.x_T for p in parts]),
            [torch.cat(t) for t in zip(*[p.stylegan for p in parts])],
            [torch.cat(t) for t in zip(*[p.encoder for p in parts])],
            [torch.cat(t) for t in zip(*[p.decoder for p in parts])],
            [torch.cat(t) for t in zip(*[p.stylegan_extra for p in parts])] if extra_lens != {0} else [],
        )

    def slice(self, a: int, b: int) -> RestoreNoise:
        """Faces ``a:b`` (views, no copies)."""
        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[a:b]
        return RestoreNoise(self.z1[a:b], cut(self.z2), cut(self.inject_index), self.x_T[a:b],
                            [t[a:b] for t in self.stylegan], [t[a:b] for t in self.encoder],
                            [t[a:b] for t in self.decoder], [t[a:b] for t in self.stylegan_extra])

    def to(self, device: torch.device | str, dtype: torch.dtype) -> RestoreNoise:
        """Noise maps in ``dtype``; the latents (z, x_T) never narrower than float32, as their consumers run."""
        wide = torch.promote_types(dtype, torch.float32)

        def mv(t: torch.Tensor | None, dt: torch.dtype = dtype) -> torch.Tensor | None:
            return None if t is None else t.to(device=device, dtype=dt)
        return RestoreNoise(
            mv(self.z1, wide), mv(self.z2, wide),
            None if self.inject_index is None else self.inject_index.to(device), mv(self.x_T, wide),
            [mv(t) for t in self.stylegan], [mv(t) for t in self.encoder], [mv(t) for t in self.decoder],
            [mv(t) for t in self.stylegan_extra])


class VSPBFRModel(nn.Module):
    """Style encoder + code diffuser + StyleGAN2 feature bank + restoration network."""

    def __init__(self, style_encoder: StyleEncoder, stylegan: StyleGAN2Synthesis, code_diffuser: CodeDiffuser,
                 restoration_net: RestorationNet):
        super().__init__()
        self.style_encoder = style_encoder
        self.stylegan = stylegan
        self.code_diffuser = code_diffuser
        self.restoration_net = restoration_net
        self.schedule = DDPMSchedule.from_config(code_diffuser.config)
        self.channels_last = True      # NHWC activations: same values, faster convolutions
        self.compiled = False          # see compile_networks
        # TF32 for the float32 feature bank and restoration network (its mapping MLP included; faster on NVIDIA
        # Ampere and later, about 1e-3 less exact); the style encoder and W+ diffusion never use it (exact_float32)
        self.allow_tf32 = False
        # faces per call of the feature bank and restoration network on CPU (0: the whole batch).  Modulated
        # convolutions run one face at a time on CPU anyway (per-sample weights), so batching saves no work there
        # and only makes every activation a batch times larger: on a 2-core EPYC 4 faces together took 0.91 s
        # (bank) and 3.35 s (restoration) per face against 0.71 s and 2.9 s one at a time.  Same values either way.
        self.cpu_faces_per_call = 1
        # network name -> the model file its weights were loaded from (VSPBFRPipeline.from_dir fills it; networks
        # built in Python keep IN_MEMORY); named by NonFiniteError
        self.weight_files: dict[str, str] = {name: IN_MEMORY for name in NETWORK_NAMES}
        rc, sc, ec = restoration_net.config, stylegan.config, style_encoder.config
        if ec.num_ws < rc.n_latent or ec.num_ws < sc.num_ws or ec.w_dim != rc.w_dim or ec.w_dim != sc.w_dim:
            raise ValueError(f"incompatible networks: encoder {ec.num_ws}x{ec.w_dim}, StyleGAN {sc.num_ws}x{sc.w_dim}, "
                             f"restoration {rc.n_latent}x{rc.w_dim}")
        if code_diffuser.config.w_dim != ec.w_dim:
            raise ValueError("code diffuser width differs from the encoder's W+ width")
        if sc.resolution < rc.resolution:
            raise ValueError("the StyleGAN2 feature bank must reach the restoration resolution")
        for k in range(1, rc.log_size - 1):
            if sc.channels(2 ** (k + 2)) != rc.channels(2 ** (k + 2)):
                raise ValueError(f"feature bank width differs from the restoration decoder at {2 ** (k + 2)} px")

    def set_precision(self, dtype: torch.dtype, device: torch.device | str | None = None) -> VSPBFRModel:
        """Run in ``dtype`` on ``device``; under half precision the W+ path stays float32.

        The style encoder, the code diffuser and the mapping MLP are fragile in half precision: the W+ codes
        feed a diffusion whose attention is sharp, and small code errors grow there (measured on the parity
        fixture: a bfloat16 encoder moved the diffused prompt by 2.3).  They are cast directly from their
        current values, so they never pass through half precision; the StyleGAN feature bank and the
        restoration network (90% of the work without the encoder) run in ``dtype``.
        """
        half = dtype in (torch.float16, torch.bfloat16)
        keep = (self.style_encoder, self.code_diffuser, self.restoration_net.style)
        for sub in keep:
            sub.to(device=device, dtype=torch.float32 if half else dtype)
        kept = {id(t) for sub in keep for t in list(sub.parameters()) + list(sub.buffers())}
        for sub in self.modules():
            for name, p in list(sub.named_parameters(recurse=False)):
                if id(p) not in kept:
                    sub._parameters[name] = nn.Parameter(p.data.to(device=device, dtype=dtype),
                                                         requires_grad=p.requires_grad)
            for name, b in list(sub.named_buffers(recurse=False)):
                if b is not None and id(b) not in kept:
                    sub._buffers[name] = b.to(device=device, dtype=dtype if b.is_floating_point() else None)
        # the encoder's plain nn.Conv2d weights in the activations' NHWC layout (same values; saves a reorder
        # of every weight on every call); float64 runs NCHW
        self.style_encoder.to(memory_format=torch.channels_last if self.channels_last and dtype != torch.float64
                              else torch.contiguous_format)
        return self

    COMPILED = ("style_encoder", "code_diffuser", "stylegan", "restoration_net")

    def compile_networks(self, enable: bool = True, **options) -> VSPBFRModel:
        """Opt-in ``torch.compile`` of the four networks (in place; weights and state dict unchanged).

        ``options`` go to ``torch.compile`` (``mode``, ``backend``, ``dynamic``, ``fullgraph``); the first
        call per input shape, dtype and device compiles (tens of seconds to minutes), later calls reuse it.
        ``enable=False`` goes back to eager.  Compiled and eager outputs agree to float rounding, not bit for
        bit (the compiler fuses and reorders element-wise work), so parity runs stay eager.
        """
        if enable and not hasattr(nn.Module, "compile"):
            raise RuntimeError(f"torch.compile of the networks needs torch >= 2.2 (this is {torch.__version__})")
        for name in self.COMPILED:
            sub = getattr(self, name)
            if enable:
                sub.compile(**options)
            else:
                sub._compiled_call_impl = None
        self.compiled = enable
        return self

    @property
    def resolution(self) -> int:
        return self.restoration_net.config.resolution

    @property
    def num_bank_features(self) -> int:
        """Feature maps 0..log2(R)-2 (4 .. R px): everything the restoration decoder consumes."""
        return self.restoration_net.config.log_size - 1

    # -- randomness ------------------------------------------------------------------------------

    def draw_noise(self, batch: int, generator: torch.Generator | None, *, mixing_probability: float = MIXING_PROBABILITY,
                   style_sample: bool = False) -> RestoreNoise:
        """Draw one batch's noise from one generator (official order, discarded draws skipped)."""
        w_dim = self.restoration_net.config.w_dim
        mixing = mixing_probability > 0 and rand_scalar(generator) < mixing_probability
        if mixing:
            z = randn((2, batch, w_dim), generator)
            z1, z2 = z[0], z[1]
        else:
            z1, z2 = randn((batch, w_dim), generator), None
        x_T = randn((batch, self.style_encoder.config.num_ws, w_dim), generator)
        sg = [randn(s, generator) for s in self.stylegan.noise_shapes(batch, self.num_bank_features)]
        inject = None
        if mixing:
            inject = torch.full((batch,), randint_scalar(1, self.restoration_net.config.n_latent - 1, generator))
        enc = [randn(s, generator) for s in self.restoration_net.encoder_noise_shapes(batch)]
        dec = [randn(s, generator) for s in self.restoration_net.decoder_noise_shapes(batch)]
        extra = []
        if style_sample:
            all_shapes = self.stylegan.noise_shapes(batch)
            extra = [randn(s, generator) for s in all_shapes[len(sg):]]
        return RestoreNoise(z1, z2, inject, x_T, sg, enc, dec, extra)

    def draw_noise_per_face(self, generators: list[torch.Generator | None], **kwargs) -> RestoreNoise:
        """One generator per face; the result for a face depends only on its own generator."""
        parts = [self.draw_noise(1, g, **kwargs) for g in generators]
        return RestoreNoise.cat(parts, self.restoration_net.config.n_latent)

    # -- stages ----------------------------------------------------------------------------------

    def _nhwc(self, x: torch.Tensor) -> bool:
        return self.channels_last and x.dtype != torch.float64

    def memory_format(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the activation layout the networks run in (NHWC when ``channels_last``, except float64,
        whose convolutions have no NHWC kernels on CPU and only slow down)."""
        return x.contiguous(memory_format=torch.channels_last if self._nhwc(x) else torch.contiguous_format)

    def encode(self, faces: torch.Tensor) -> torch.Tensor:
        """Aligned faces ``[F, 3, R, R]`` in [-1, 1] -> encoder W+ ``[F, num_ws, w_dim]`` (float32 under half)."""
        dt = self.style_encoder.latent_avg.dtype          # float32 (or float64) even when the rest is half
        with exact_float32():
            ws = self.style_encoder(self.memory_format(faces.to(dt)))
        self.check_finite("encode", "style_encoder", [ws], {"faces": faces})
        return ws

    def diffuse(self, ws: torch.Tensor, x_T: torch.Tensor, callback: StepCallback | None = None) -> torch.Tensor:
        """Encoder W+ -> visual style prompt W+ (same shape, in the diffuser's float32/float64)."""
        dt = next(self.code_diffuser.parameters()).dtype     # float32 (or float64) even when the rest is half
        with exact_float32():
            prompts = sample_wplus(self.code_diffuser, ws.to(dt), x_T.to(ws.device, dt), self.schedule, callback)
        self.check_finite("diffuse", "code_diffuser", [prompts], {"W+ codes": ws, "x_T noise": x_T})
        return prompts

    def feature_bank(self, prompts: torch.Tensor, noise: list[torch.Tensor], extra_noise: list[torch.Tensor] | None = None,
                     style_sample: bool = False, on_group: Callable[[int], None] | None = None
                     ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """StyleGAN2 features 4..R px from the prompts; with ``style_sample`` the full RGB render too.

        Runs in ``compute_dtype`` whatever the prompts' dtype (the synthesis follows its input's dtype, so
        float32 prompts from ``diffuse`` would otherwise run a half-precision model's bank in float32).
        ``on_group(faces)`` is called after each group of faces (one face at a time on CPU, see
        :meth:`_face_slices`), for progress reports; it may raise to interrupt.
        """
        prompts = prompts.to(self.compute_dtype)
        if style_sample:
            if not extra_noise:
                raise ValueError("style_sample needs the extra StyleGAN noise (draw_noise(..., style_sample=True))")
            with exact_float32(not self.allow_tf32):
                feats, img = self.stylegan(prompts, list(noise) + list(extra_noise), None, return_image=True,
                                           channels_last=self._nhwc(prompts))
            self.check_finite("feature_bank", "stylegan", [*feats[: self.num_bank_features], img],
                              {"prompts": prompts, "noise": list(noise) + list(extra_noise)})
            return feats[: self.num_bank_features], img
        nhwc = self._nhwc(prompts)
        parts = []
        with exact_float32(not self.allow_tf32):
            for f in self._face_slices(prompts):
                parts.append(self.stylegan(prompts[f], [t[f] for t in noise], self.num_bank_features,
                                           channels_last=nhwc)[0])
                if on_group is not None:
                    on_group(parts[-1][0].shape[0])
        bank = parts[0] if len(parts) == 1 else [torch.cat(level) for level in zip(*parts)]
        self.check_finite("feature_bank", "stylegan", bank, {"prompts": prompts, "noise": list(noise)})
        return bank, None

    def _face_slices(self, x: torch.Tensor) -> list[slice]:
        """The groups of faces that go through the bank / restoration network together (``cpu_faces_per_call``
        on CPU, the whole batch elsewhere; one empty group for an empty batch)."""
        n = x.shape[0]
        step = max(1, n)
        if x.device.type == "cpu" and self.cpu_faces_per_call > 0:
            step = min(step, self.cpu_faces_per_call)
        return [slice(a, a + step) for a in range(0, max(1, n), step)]

    @property
    def compute_dtype(self) -> torch.dtype:
        """The precision of the feature bank and the restoration network (the bulk of the work)."""
        return self.restoration_net.conv1.modulation.weight.dtype

    def check_finite(self, stage: str, network: str, outputs: list[torch.Tensor],
                     inputs: dict[str, torch.Tensor | list[torch.Tensor] | None]) -> None:
        """Raise unless every output value is finite (see the module docstring); ``inputs`` are looked at only
        then, to tell a bad input (InputError) from a network that produced NaN / inf (NonFiniteError)."""
        if all_finite(*outputs):
            return
        for name, value in inputs.items():
            parts = [] if value is None else value if isinstance(value, list) else [value]
            parts = [t for t in parts if t is not None and t.is_floating_point()]
            if parts and not all_finite(*parts):
                bad, total = _count_bad(parts)
                raise InputError(f"{stage}: the input {name} contains {bad} NaN or infinite value(s) of {total}; "
                                 "the step that produced it went wrong (try running it in float32)")
        bad, total = _count_bad([t for t in outputs if t is not None])
        label = NETWORK_NAMES.get(network, network)
        source = self.weight_files.get(network, IN_MEMORY)
        dtype = str(outputs[0].dtype).replace("torch.", "")
        half = outputs[0].dtype in (torch.float16, torch.bfloat16) or self.compute_dtype in (torch.float16,
                                                                                              torch.bfloat16)
        what = ("the weights given in memory contain NaN / inf values or are damaged" if source == IN_MEMORY else
                "the model file is probably damaged: re-download it (vspbfr download) and check it with "
                "'vspbfr info --check'")
        precision = str(self.compute_dtype).replace("torch.", "")
        hint = (f"Under {precision} the values may have overflowed: try float32 first; otherwise {what}." if half
                else f"{what[0].upper()}{what[1:]} (it ran in {precision}, so a precision overflow is unlikely).")
        raise NonFiniteError(
            f"stage '{stage}': the {label} produced {bad} NaN or infinite value(s) of {total} ({dtype} on "
            f"{outputs[0].device}) from finite inputs (weights: {source}). {hint}",
            stage=stage, network=network, source=source)

    def restore(self, faces: torch.Tensor, bank: list[torch.Tensor], prompts: torch.Tensor, noise: RestoreNoise,
                bank_scale: float = 1.0, on_group: Callable[[int], None] | None = None) -> torch.Tensor:
        """Faces + bank + prompts + noise -> restored faces; ``on_group`` as in :meth:`feature_bank`."""
        faces = self.memory_format(faces.to(self.compute_dtype))
        groups = self._face_slices(faces)
        outs = []
        with exact_float32(not self.allow_tf32):
            for g in groups:
                part = noise if len(groups) == 1 else noise.slice(g.start, g.stop)
                outs.append(self.restoration_net(faces[g], [f[g] for f in bank], prompts[g], part.z1, part.z2,
                                                 part.inject_index, part.encoder, part.decoder, bank_scale=bank_scale))
                if on_group is not None:
                    on_group(outs[-1].shape[0])
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        self.check_finite("restore", "restoration_net", [out],
                          {"faces": faces, "feature bank": list(bank), "prompts": prompts,
                           "noise": [noise.z1, noise.z2, *noise.encoder, *noise.decoder]})
        return out

    def forward(self, faces: torch.Tensor, noise: RestoreNoise, *, prompt_mix: float = 1.0, bank_scale: float = 1.0,
                callback: StepCallback | None = None) -> torch.Tensor:
        """Aligned faces -> restored faces (unclamped, [-1, 1] nominal).

        ``prompt_mix`` interpolates the prompt between the encoder's W+ (0) and the diffused W+ (1,
        official); ``bank_scale`` scales the feature-bank contribution (1, official).
        """
        noise = noise.to(faces.device, self.compute_dtype)
        ws = self.encode(faces)
        prompts = self.diffuse(ws, noise.x_T, callback)
        if prompt_mix != 1.0:
            prompts = torch.lerp(ws, prompts, prompt_mix)
        prompts = prompts.to(self.compute_dtype)
        bank, _ = self.feature_bank(prompts, noise.stylegan)
        return self.restore(faces, bank, prompts, noise, bank_scale)
