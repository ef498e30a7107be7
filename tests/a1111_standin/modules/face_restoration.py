"""Stand-in of modules.face_restoration: the restorer base class and the txt2img/img2img call site helper."""
from modules import shared


class FaceRestoration:
    def name(self):
        return "None"

    def restore(self, np_image):
        return np_image


def restore_faces(np_image):
    """The first registered restorer whose name() is the selected model; no match: the image, unchanged."""
    wanted = shared.opts.face_restoration_model
    matches = [r for r in shared.face_restorers if wanted is None or r.name() == wanted]
    if not matches:
        return np_image
    return matches[0].restore(np_image)
