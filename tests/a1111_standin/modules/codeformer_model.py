"""Stand-in of modules.codeformer_model: a built-in restorer named "CodeFormer" (returns the image unchanged)."""
from modules import errors, face_restoration, shared

codeformer = None


class FaceRestorerCodeFormer(face_restoration.FaceRestoration):
    def __init__(self, dirname):
        self.model_path = dirname
        self.calls = 0

    def name(self):
        return "CodeFormer"

    def restore(self, np_image, w=None):
        self.calls += 1
        return np_image


def setup_model(dirname: str) -> None:
    global codeformer
    try:
        codeformer = FaceRestorerCodeFormer(dirname)
        shared.face_restorers.append(codeformer)
    except Exception:
        errors.report("Error setting up CodeFormer", exc_info=True)
