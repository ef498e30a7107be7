"""Stand-in of modules.processing: process_images() around a fake sampler.

Faithful parts: override_settings are applied with ``opts.set(k, v, is_api=True, run_callbacks=False)`` (an
unknown key raises KeyError) and restored afterwards; ``p.restore_faces`` defaults to
``opts.face_restoration``; always-on scripts' ``process`` runs before sampling; each decoded sample becomes
uint8 (H, W, 3) RGB, goes through ``face_restoration.restore_faces`` between two ``torch_gc()`` calls, then
``Image.fromarray``; the infotext holds ``Face restoration: <model>`` and ``p.extra_generation_params``.
Stand-in part: the "decoded samples" are the float [3, H, W] arrays in [0, 1] returned by ``fake_samples(p)``.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from PIL import Image

from modules import devices, face_restoration, scripts, shared

fake_samples: Callable[[Any], list] | None = None


class StableDiffusionProcessing:
    def __init__(self, prompt="", seed=-1, restore_faces=None, override_settings=None,
                 override_settings_restore_afterwards=True, n_iter=1, batch_size=1, **kwargs):
        self.prompt = prompt
        self.seed = seed
        self.restore_faces = restore_faces
        self.override_settings = dict(override_settings or {})
        self.override_settings_restore_afterwards = override_settings_restore_afterwards
        self.batch_size = batch_size
        self.n_iter = n_iter
        self.extra_generation_params: dict[str, Any] = {}
        self.scripts = None
        self.script_args = []
        self.batch_index = 0


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    pass


class Processed:
    def __init__(self, p, images, infotexts):
        self.images = images
        self.infotexts = infotexts
        self.info = infotexts[0] if infotexts else ""


def create_infotext(p) -> str:
    params = {
        "Seed": p.seed,
        "Face restoration": shared.opts.face_restoration_model if p.restore_faces else None,
        **p.extra_generation_params,
    }
    text = ", ".join(k if k == v else f"{k}: {v}" for k, v in params.items() if v is not None)
    return f"{p.prompt}\n{text}".strip()


def process_images(p) -> Processed:
    opts = shared.opts
    stored = {k: opts.data[k] if k in opts.data else opts.get_default(k) for k in p.override_settings if k in opts.data}
    try:
        for k, v in p.override_settings.items():
            opts.set(k, v, is_api=True, run_callbacks=False)
        return process_images_inner(p)
    finally:
        if p.override_settings_restore_afterwards:
            for k, v in stored.items():
                setattr(opts, k, v)


def process_images_inner(p) -> Processed:
    if p.restore_faces is None:
        p.restore_faces = shared.opts.face_restoration
    if p.scripts is not None:
        p.scripts.process(p)
    images, infotexts = [], []
    for i, sample in enumerate(fake_samples(p)):
        p.batch_index = i
        x_sample = 255. * np.moveaxis(np.asarray(sample, dtype=np.float32), 0, 2)
        x_sample = x_sample.astype(np.uint8)
        if p.restore_faces:
            devices.torch_gc()
            x_sample = face_restoration.restore_faces(x_sample)
            devices.torch_gc()
        image = Image.fromarray(x_sample)
        if p.scripts is not None:
            pp = scripts.PostprocessImageArgs(image)
            p.scripts.postprocess_image(p, pp)
            image = pp.image
        images.append(image)
        infotexts.append(create_infotext(p))
    res = Processed(p, images, infotexts)
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    return res
