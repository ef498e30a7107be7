"""Centred (zero-phase) smoothing along time for face tracks: landmarks, W+ codes, style prompts (issue 14).

Why centred: on an offline video every frame's future is known, so the filter looks as far ahead as back and
adds no lag (a causal filter such as an exponential moving average always trails the motion).  When frames
arrive in windows, :class:`CenteredSmoother` gives the very same values with a fixed delay.

The filter, for frame ``t`` of a track, with ``sigma = strength`` frames (``SIGMA_PER_STRENGTH`` = 1) and a
window of ``radius = ceil(3 * sigma)`` frames on each side (:func:`smoothing_radius`):

1. Only frames where the track is *present* take part; absent frames are skipped and the weights of the others
   renormalised.  Absent frames come back unchanged.
2. Outlier rejection (on by default for landmarks): a frame whose value lies more than ``outlier`` away from
   (for landmarks: whose farthest point lies more than ``outlier`` face scales from) the per-coordinate median of the present frames within ``MEDIAN_RADIUS`` (2) frames of it (at least 3 of
   them) is an outlier.  It takes no part in its neighbours' windows, and its own output is the smoothed value
   of its neighbours around that median.
3. Weights ``w_s = exp(-((s - t) / sigma)^2 / 2) * exp(-(d(x_s, x_t) / edge)^2 / 2)``: a Gaussian in time times
   an *edge-preserving* (bilateral) term in value.  ``d`` is the distance of two frames' values (for landmarks:
   the mean distance of the five points divided by the face scale, the RMS distance of the points to their
   centroid; for other sequences: the RMS of the element-wise difference).  Small jitter (``d << edge``) is
   averaged away; a sudden jump (``d >> edge``: a cut, a detector that re-locks) gets almost no weight from the
   frames on the other side, so the output follows the step within one frame, symmetrically (frames before the
   step see only the old level, frames from the step on only the new one).  ``edge=None`` drops the term (a
   plain Gaussian, the default for W+ codes and prompts).
4. The output is a weighted *local linear* fit evaluated at ``t`` (weighted least squares of ``a + b (s - t)``):
   in the middle of a clip this is exactly the weighted mean (symmetric weights), and at the ends of the clip
   or of a presence gap, where the window is one-sided, it does not drag a moving face towards where it is
   going to be, which a plain mean would (a lag in reverse).

``strength = 0`` returns the input values exactly (no outlier rejection either).  Every output frame depends
only on the input frames within ``radius + MEDIAN_RADIUS`` (the streaming delay) of it, and each frame is
computed by the same code on the same slice offline and streaming, which is why the two agree bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ..checks import check_float
from ..errors import InputError

__all__ = ["SIGMA_PER_STRENGTH", "MEDIAN_RADIUS", "smoothing_radius", "smooth_landmarks", "smooth_sequence",
           "CenteredSmoother"]

SIGMA_PER_STRENGTH = 1.0      # Gaussian sigma in frames per unit of strength
MEDIAN_RADIUS = 2             # half width of the robust median window of outlier rejection (5 frames)
LANDMARK_EDGE = 0.2           # default edge of smooth_landmarks, in face scales (~5 px on a 100 px face)
LANDMARK_OUTLIER = 0.75       # default outlier distance of smooth_landmarks, in face scales

Metric = Literal["landmarks", "rms"]


def smoothing_radius(strength: float) -> int:
    """Frames on each side of the centred Gaussian window: ``ceil(3 * sigma)``, ``sigma = strength`` frames."""
    strength = check_float(strength, "strength", minimum=0.0)
    return int(math.ceil(3 * strength * SIGMA_PER_STRENGTH))


@dataclass(frozen=True)
class _Filter:
    """The settings of one smoothing run (internal)."""

    sigma: float
    radius: int
    edge: float | None
    outlier: float | None
    metric: Metric

    @property
    def median_radius(self) -> int:
        return MEDIAN_RADIUS if self.outlier is not None and self.radius > 0 else 0

    @property
    def delay(self) -> int:
        return self.radius + self.median_radius


def _make_filter(strength: float, edge: float | None, outlier: float | None, metric: Metric) -> _Filter:
    radius = smoothing_radius(strength)
    if edge is not None:
        edge = check_float(edge, "edge", minimum=0.0, min_open=True)
    if outlier is not None:
        outlier = check_float(outlier, "outlier", minimum=0.0, min_open=True)
    return _Filter(float(strength) * SIGMA_PER_STRENGTH, radius, edge, outlier, metric)


def _distance(values: torch.Tensor, ref: torch.Tensor, metric: Metric, worst: bool = False) -> torch.Tensor:
    """[n] distance of each of ``values`` [n, ...] to ``ref`` [...] (float64).

    Landmarks: the mean (``worst``: the largest) distance of the points, in face scales of ``ref``.
    """
    if metric == "landmarks":                                        # values [n, 5, 2]
        centred = ref - ref.mean(dim=0, keepdim=True)
        scale = centred.square().sum(dim=-1).mean().sqrt().clamp(min=1e-6)
        point = (values - ref).norm(dim=-1)                          # [n, 5]
        return (point.amax(dim=-1) if worst else point.mean(dim=-1)) / scale
    return (values - ref).square().flatten(1).mean(dim=1).sqrt()


def _outlier_at(values: torch.Tensor, present: torch.Tensor, center: int, flt: _Filter
                ) -> tuple[bool, torch.Tensor | None]:
    """Whether frame ``center`` of the median window ``values`` [n, ...] is an outlier, and the median."""
    if flt.outlier is None or not bool(present[center]):
        return False, None
    pool = values[present]
    if pool.shape[0] < 3:
        return False, None
    median = pool.median(dim=0).values
    far = float(_distance(values[center:center + 1], median, flt.metric, worst=True)[0]) > flt.outlier
    return far, median


def _smooth_at(values: torch.Tensor, use: torch.Tensor, center: int, ref: torch.Tensor, flt: _Filter
               ) -> torch.Tensor:
    """Smoothed value of frame ``center`` of the window ``values`` [n, ...] (float64) from the frames ``use``."""
    offsets = torch.arange(values.shape[0], dtype=torch.float64) - center
    w = torch.exp(-0.5 * (offsets / flt.sigma).square()) * use.to(torch.float64)
    if flt.edge is not None:
        w = w * torch.exp(-0.5 * (_distance(values, ref, flt.metric) / flt.edge).square())
    s0 = w.sum()
    if float(s0) <= 0:
        return ref
    s1 = (w * offsets).sum()
    s2 = (w * offsets.square()).sum()
    shape = (-1,) + (1,) * (values.dim() - 1)
    sx = (w.view(shape) * values).sum(dim=0)
    det = s0 * s2 - s1 * s1
    if float(det) <= 1e-9 * float(s0 * s2) or float(s2) <= 0:      # one effective frame: the weighted mean
        return sx / s0
    sxs = ((w * offsets).view(shape) * values).sum(dim=0)
    return (s2 * sx - s1 * sxs) / det


class _Engine:
    """Frame-by-frame evaluation shared by the offline functions and :class:`CenteredSmoother`.

    Frames are appended with :meth:`push`; :meth:`ready` yields the frames whose output no longer depends on
    frames still to come; :meth:`finish` marks the end of the clip.  Outputs use exactly the same slices of
    input whichever way the frames arrive.
    """

    def __init__(self, flt: _Filter) -> None:
        self.flt = flt
        self.values: list[torch.Tensor | None] = []      # float64 frames (None = absent)
        self.raw: list[torch.Tensor | None] = []         # the frames as given
        self.present: list[bool] = []
        self.flags: list[bool] = []                      # outlier flag of each kept frame, once known
        self.medians: list[torch.Tensor | None] = []     # the median of each flagged frame (its reference)
        self.emitted = 0
        self.ended = False
        self.shape: tuple[int, ...] | None = None
        self.base = 0                                    # absolute index of values[0] and flags[0] (old frames
                                                         # are dropped, so a long clip keeps a bounded buffer)

    def push(self, value: torch.Tensor | None, present: bool) -> None:
        if present:
            if value is None:
                raise InputError("CenteredSmoother.push: a present frame needs a value")
            if self.shape is None:
                self.shape = tuple(value.shape)
            elif tuple(value.shape) != self.shape:
                raise InputError(f"CenteredSmoother.push: frame of shape {tuple(value.shape)}, the earlier "
                                 f"frames were {self.shape}")
            v64 = value.detach().to("cpu", torch.float64)
            if not torch.isfinite(v64).all():
                raise InputError("CenteredSmoother.push: a present frame holds NaN or infinite values")
        else:
            v64 = None
        self.values.append(v64)
        self.raw.append(value)
        self.present.append(present)
        self._advance()

    def finish(self) -> None:
        self.ended = True
        self._advance()

    @property
    def total(self) -> int:
        return self.base + len(self.values)

    @property
    def flagged(self) -> int:
        """Absolute index of the first frame whose outlier flag is not known yet."""
        return self.base + len(self.flags)

    def _window(self, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked float64 values [hi - lo, ...] (absent frames as zeros) and presence of absolute [lo, hi)."""
        assert self.shape is not None
        zeros = torch.zeros(self.shape, dtype=torch.float64)
        part = self.values[lo - self.base:hi - self.base]
        vals = torch.stack([v if v is not None else zeros for v in part])
        pres = torch.tensor(self.present[lo - self.base:hi - self.base], dtype=torch.bool)
        return vals, pres

    def _advance(self) -> None:
        rm = self.flt.median_radius
        total = self.total
        while self.flagged < total and (self.ended or self.flagged + rm < total):   # outlier flags
            s = self.flagged
            flag, median = False, None
            if self.present[s - self.base] and rm > 0:
                lo, hi = max(0, s - rm), min(total, s + rm + 1)
                vals, pres = self._window(lo, hi)
                flag, median = _outlier_at(vals, pres, s - lo, self.flt)
            self.flags.append(flag)
            self.medians.append(median if flag else None)

    def ready(self) -> list[torch.Tensor | None]:
        """Outputs of the next frames that can be computed now, in order (absent frames as given)."""
        out: list[torch.Tensor | None] = []
        r = self.flt.radius
        while self.emitted < self.flagged and (self.ended or self.emitted + r < self.flagged):
            t = self.emitted
            out.append(self._output(t))
            self.emitted += 1
        self._drop_old()
        return out

    def _output(self, t: int) -> torch.Tensor | None:
        raw = self.raw[t - self.base]
        if not self.present[t - self.base] or self.flt.radius == 0 or raw is None:
            return raw
        lo, hi = max(0, t - self.flt.radius), min(self.total, t + self.flt.radius + 1)
        vals, pres = self._window(lo, hi)
        use = pres & ~torch.tensor(self.flags[lo - self.base:hi - self.base], dtype=torch.bool)
        median = self.medians[t - self.base]
        ref = median if median is not None else vals[t - lo]
        return _smooth_at(vals, use, t - lo, ref, self.flt).to(raw.device, raw.dtype)

    def _drop_old(self) -> None:
        keep_from = max(0, self.emitted - self.flt.delay - 1)
        if keep_from > self.base:
            cut = keep_from - self.base
            del self.values[:cut], self.raw[:cut], self.present[:cut], self.flags[:cut], self.medians[:cut]
            self.base = keep_from


def _check_track(values: torch.Tensor, present: torch.Tensor | None, where: str) -> torch.Tensor:
    if not isinstance(values, torch.Tensor) or values.dim() < 1:
        raise InputError(f"{where}: values must be a tensor [T, ...], got {type(values).__name__}")
    if not values.is_floating_point():
        raise InputError(f"{where}: values must be floating point, got {values.dtype}")
    t = values.shape[0]
    if present is None:
        return torch.ones(t, dtype=torch.bool)
    if not isinstance(present, torch.Tensor) or tuple(present.shape) != (t,):
        got = tuple(present.shape) if isinstance(present, torch.Tensor) else type(present).__name__
        raise InputError(f"{where}: present must be a bool tensor [T] = [{t}], got {got}")
    present = present.to("cpu", torch.bool)
    if not torch.isfinite(values[present.to(values.device)]).all():
        raise InputError(f"{where}: the present frames hold NaN or infinite values")
    return present


def _run_offline(values: torch.Tensor, present: torch.Tensor, flt: _Filter) -> torch.Tensor:
    if flt.radius == 0 or values.shape[0] == 0:
        return values.clone()
    engine = _Engine(flt)
    frames = values.detach()
    for k in range(values.shape[0]):
        engine.push(frames[k], bool(present[k]))
    engine.finish()
    out = engine.ready()
    return torch.stack([o if o is not None else frames[k] for k, o in enumerate(out)]).to(values.device)


def smooth_landmarks(landmarks: torch.Tensor, present: torch.Tensor | None, strength: float, *,
                     edge: float | None = LANDMARK_EDGE, outlier: float | None = LANDMARK_OUTLIER
                     ) -> torch.Tensor:
    """Centred, edge-preserving smoothing of one track's five-point landmarks, with outlier rejection.

    Args:
        landmarks: ``[T, 5, 2]`` float, one frame per row (pixels).
        present: ``[T]`` bool, the frames where the track was detected (``None`` = all); the others are
            skipped and returned unchanged.
        strength: 0 = identity (the input values exactly); otherwise the Gaussian sigma in frames
            (``SIGMA_PER_STRENGTH`` = 1; window ``ceil(3 * strength)`` frames each side).  1-3 suits detector jitter.
        edge: changes larger than about this many face scales (RMS distance of the points to their centroid,
            about a quarter of the box) count as real motion and are not smoothed across (default 0.2;
            ``None`` = plain Gaussian).
        outlier: a frame with a point farther than this many face scales from the median of its 5-frame
            neighbourhood is replaced by its neighbours' smoothed value (default 0.75; ``None`` = off).

    Returns:
        ``[T, 5, 2]`` of the input dtype and device.
    """
    if not isinstance(landmarks, torch.Tensor) or landmarks.dim() != 3 or tuple(landmarks.shape[1:]) != (5, 2):
        got = tuple(landmarks.shape) if isinstance(landmarks, torch.Tensor) else type(landmarks).__name__
        raise InputError(f"smooth_landmarks: landmarks must be [T, 5, 2], got {got}")
    present = _check_track(landmarks, present, "smooth_landmarks")
    flt = _make_filter(strength, edge, outlier, "landmarks")
    return _run_offline(landmarks, present, flt)


def smooth_sequence(values: torch.Tensor, present: torch.Tensor | None, strength: float, *,
                    edge: float | None = None, outlier: float | None = None) -> torch.Tensor:
    """The same centred smoothing for any per-frame values: W+ codes ``[T, num_ws, w_dim]``, style prompts.

    Args:
        values: ``[T, ...]`` float.
        present: ``[T]`` bool or ``None`` (all present); absent frames are skipped and returned unchanged.
        strength: as in :func:`smooth_landmarks` (0 = the input exactly; sigma = strength frames).
        edge: optional edge-preserving term, in RMS units of the values (default ``None``: plain Gaussian).
        outlier: optional outlier distance from the 5-frame median, in RMS units (default ``None``: off).
    """
    present = _check_track(values, present, "smooth_sequence")
    flt = _make_filter(strength, edge, outlier, "rms")
    return _run_offline(values, present, flt)


class CenteredSmoother:
    """Streaming form of :func:`smooth_landmarks` / :func:`smooth_sequence` for frames that arrive in windows.

    :meth:`push` takes one frame (``None`` or ``present=False`` for a frame without the face) and returns the
    outputs that became final, in frame order: after frame ``n`` it returns frame ``n - delay``, where
    ``delay = radius + (MEDIAN_RADIUS if outlier rejection is on)``; :meth:`flush` returns the rest at the end.
    The values equal the offline function's exactly.  Absent frames come back as given.

    Args:
        strength: as in :func:`smooth_landmarks`.
        landmarks: ``True`` = the landmark filter (defaults ``edge=0.2``, ``outlier=0.75`` face scales, frames
            ``[5, 2]``); ``False`` = the sequence filter (defaults ``None``, RMS units).
        edge, outlier: override the defaults (pass ``None`` explicitly through ``smooth_*`` for "off").
    """

    def __init__(self, strength: float, *, landmarks: bool = False, edge: float | None | Literal["default"] =
                 "default", outlier: float | None | Literal["default"] = "default") -> None:
        if edge == "default":
            edge = LANDMARK_EDGE if landmarks else None
        if outlier == "default":
            outlier = LANDMARK_OUTLIER if landmarks else None
        self._flt = _make_filter(strength, edge, outlier, "landmarks" if landmarks else "rms")
        self._landmarks = landmarks
        self._engine = _Engine(self._flt)
        self._flushed = False

    @property
    def radius(self) -> int:
        """Frames of the Gaussian window on each side."""
        return self._flt.radius

    @property
    def delay(self) -> int:
        """Frames between pushing a frame and getting it back."""
        return self._flt.delay

    def push(self, value: torch.Tensor | None, present: bool = True) -> list[torch.Tensor | None]:
        """Add the next frame; returns the frames that are now final (possibly none)."""
        if self._flushed:
            raise InputError("CenteredSmoother.push: the smoother was flushed; make a new one for the next clip")
        present = bool(present) and value is not None
        if present and self._landmarks and tuple(value.shape) != (5, 2):   # type: ignore[union-attr]
            raise InputError(f"CenteredSmoother.push: landmark frames must be [5, 2], got {tuple(value.shape)}")  # type: ignore[union-attr]
        if present and not value.is_floating_point():   # type: ignore[union-attr]
            raise InputError(f"CenteredSmoother.push: frames must be floating point, got {value.dtype}")  # type: ignore[union-attr]
        if self._flt.radius == 0:
            return [value]
        self._engine.push(value, present)
        return self._engine.ready()

    def flush(self) -> list[torch.Tensor | None]:
        """End of the clip: the remaining frames."""
        if self._flushed:
            return []
        self._flushed = True
        if self._flt.radius == 0:
            return []
        self._engine.finish()
        return self._engine.ready()
