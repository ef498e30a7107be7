"""VSPBFRIdentityScore (identity of face pairs) and the identity widgets the restore nodes share."""
from __future__ import annotations

from . import comfy_host as host
from . import identity_ops, ops
from .face_nodes import DETECTOR

_ARCFACE, _DLIB = ops.default_threshold("arcface"), ops.default_threshold("dlib")

IDENTITY = (list(ops.EMBEDDERS), {"default": "arcface", "tooltip": "Identity network. arcface: "
            "recognition_arcface_ir_se50.pth in models/facexlib (or models/vspbfr); dlib: the pip packages dlib-bin "
            "and face_recognition_models, runs on the CPU. Restore nodes load it only when candidates > 1, a "
            "reference is connected or only_matching is on."})
CANDIDATES = ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Best-of-N: restore each face N times "
              "(candidate 1 is the restoration you get with 1) and keep the one most like the reference photos, or "
              "like the input face without a reference. N times the work. 1: off."})
ONLY_MATCHING = ("BOOLEAN", {"default": False, "tooltip": "Restore only the faces that look like the reference "
                 "(identity at or above the match threshold); the other faces keep their pixels exactly. Needs the "
                 "reference input."})
USE_DEFAULT_THRESHOLD = ("BOOLEAN", {"default": True, "tooltip": "On: the identity network's own match threshold "
                         f"(arcface {_ARCFACE:.2f}, dlib {_DLIB:.2f}); match_threshold is then ignored. Off: use "
                         "match_threshold."})
MATCH_THRESHOLD = ("FLOAT", {"default": 0.5, "min": -1.0, "max": 1.0, "step": 0.01, "tooltip": "Only with "
                   "use_default_threshold off: the identity (cosine similarity, -1..1) a face needs to the reference "
                   "to count as the same person for only_matching."})
REFERENCE_MIX = ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": "Move each face's "
                 "style prompt this far toward the reference's W+ code on the middle layers (the facial features). "
                 "0: off. Needs the reference input."})
REFERENCE = ("IMAGE", {"tooltip": "Photos of the person (an IMAGE batch of one or more); the largest face of each "
             "is used. Turns on identity: scores in the identity output, best-of-N by likeness to it, only_matching, "
             "reference_mix."})
# The all-in-one node's identity widgets, in this order after its older optional widgets: a workflow saved before
# them keeps its widget values in place (the front end restores widgets by position) and gets these defaults, which
# restore exactly as before (no identity network runs).  The restore node has candidates, identity and reference_mix, after keep_gray, then the reference input.
IDENTITY_WIDGETS = {"candidates": CANDIDATES, "identity": IDENTITY, "only_matching": ONLY_MATCHING,
                    "use_default_threshold": USE_DEFAULT_THRESHOLD, "match_threshold": MATCH_THRESHOLD,
                    "reference_mix": REFERENCE_MIX}
FACES_IMAGE = ("IMAGE", {"tooltip": "Faces to compare: aligned crops (e.g. the detect node's crops, or restored "
               "crops) or whole images, as the inputs widget says."})


class VSPBFRIdentityScore:
    DESCRIPTION = ("Identity score of face pairs: the cosine similarity of identity embeddings (arcface or dlib), "
                   "-1..1, higher = more the same person. Compare the detect node's crops with the restored crops, "
                   "or two sets of photos. Equal batch sizes pair image i with image i; a batch of one is compared "
                   "with every image of the other.")
    CATEGORY = "VSPBFR"
    RETURN_TYPES = ("FLOAT", "STRING")
    RETURN_NAMES = ("scores", "report")
    OUTPUT_IS_LIST = (True, False)
    OUTPUT_TOOLTIPS = ("One score per pair, in pair order (a list: a node fed from it runs once per score).",
                       "The scores as text, one line per pair, with the network's match threshold.")
    FUNCTION = "score"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image_a": FACES_IMAGE, "image_b": FACES_IMAGE,
            "inputs": (list(identity_ops.SCORE_INPUTS), {"default": identity_ops.SCORE_INPUTS[0], "tooltip":
                       "aligned crops: the images are FFHQ-aligned face crops (any square size). whole images: the "
                       "largest face of each image is detected and aligned first."}),
            "identity": IDENTITY, "facedetection": DETECTOR}}

    def score(self, image_a, image_b, inputs, identity, facedetection):
        scores, report = identity_ops.identity_scores(image_a, image_b, inputs=inputs, identity=identity,
                                                      detector=facedetection, callback=host.Progress())
        return (scores, report)
