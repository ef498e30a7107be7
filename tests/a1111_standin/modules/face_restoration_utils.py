"""Stand-in of modules.face_restoration_utils (A1111 1.8.0+): CommonFaceRestoration.

As in A1111: lazy ``load_net``; a load failure is logged and the input returned unchanged; models are sent
to ``get_device()`` before and to the CPU after a run when ``face_restoration_unload`` is set. The facexlib
helper is not available here: touching ``face_helper`` fails, so an adapter that relies on it is caught.
"""
from __future__ import annotations

import logging
import os
from functools import cached_property

from modules import devices, face_restoration, shared

logger = logging.getLogger(__name__)


class CommonFaceRestoration(face_restoration.FaceRestoration):
    def __init__(self, model_path: str):
        super().__init__()
        self.net = None
        self.model_path = model_path
        os.makedirs(model_path, exist_ok=True)

    @cached_property
    def face_helper(self):
        raise ImportError("stand-in: facexlib's FaceRestoreHelper is not available (VSPBFR must not use it)")

    def send_model_to(self, device):
        if self.net:
            self.net.to(device)
        if self.face_helper:
            self.face_helper.face_det.to(device)

    def get_device(self):
        raise NotImplementedError("get_device must be implemented by subclasses")

    def load_net(self):
        raise NotImplementedError("load_net must be implemented by subclasses")

    def restore_with_helper(self, np_image, restore_face):
        try:
            if self.net is None:
                self.net = self.load_net()
        except Exception:
            logger.warning("Unable to load face-restoration model", exc_info=True)
            return np_image
        try:
            self.send_model_to(self.get_device())
            raise ImportError("stand-in: restore_with_face_helper needs facexlib")
        finally:
            if shared.opts.face_restoration_unload:
                self.send_model_to(devices.cpu)
