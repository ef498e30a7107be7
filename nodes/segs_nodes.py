"""VSPBFRFacesToSEGS (faces -> Impact-Pack SEGS) and VSPBFRSEGSToFaces (any SEGS detector's faces -> VSPBFR_FACES)."""
from __future__ import annotations

from . import comfy_host as host
from . import ops
from . import segs as segs_ops    # not `segs`: the SEGS input's name
from .face_nodes import DETECTOR, MASK_WIDGETS


class VSPBFRFacesToSEGS:
    DESCRIPTION = ("The faces found by the VSPBFR detect node as Impact-Pack SEGS (one SEG per face: crop region, "
                   "box, score, label 'face', and the face's paste mask as its mask), for FaceDetailer, the SEGS "
                   "filters and every other SEGS node. One image at a time, as Impact's own detectors.")
    CATEGORY = "VSPBFR"
    RETURN_TYPES = ("SEGS",)
    RETURN_NAMES = ("segs",)
    OUTPUT_TOOLTIPS = ("((height, width), [SEG, ...]): one SEG per face, in the faces' order; none when no face "
                       "was found.",)
    FUNCTION = "convert"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The image the faces were found in (a batch of one: SEGS describe one "
                                "image)."}),
            "faces": ("VSPBFR_FACES", {"tooltip": "The faces output of the VSPBFR detect node."}),
            "crop_factor": ("FLOAT", {"default": segs_ops.DEFAULT_CROP_FACTOR, "min": 1.0, "max": 100.0, "step": 0.1,
                                      "tooltip": "Crop region of each SEG: the face box enlarged this many times "
                                      "around its centre, clipped to the image (3.0 as Impact's detectors)."}),
            "mask_shape": (list(ops.MASK_SHAPES), {"default": ops.DEFAULT_MASK_SHAPE, "tooltip": "The SEG masks: "
                           "each face's paste mask of this shape (as the paste node's: landmarks the face shape, "
                           "parsing the face parts by a parsing network, ellipse the face oval, square the crop)."}),
            "feather": ("FLOAT", {"default": 50.0, "min": 0.0, "max": 230.0, "step": 1.0, "tooltip": "Soft edge "
                                  "of the SEG masks, in pixels of a 512 crop, as the paste node (0: hard edge)."}),
        }, "optional": {"mask_parts": MASK_WIDGETS["mask_parts"], "parser": MASK_WIDGETS["parser"]}}

    def convert(self, image, faces, crop_factor, mask_shape, feather, mask_parts="all", parser="parsenet"):
        return (segs_ops.faces_to_segs(image, faces, crop_factor=crop_factor, mask_shape=mask_shape, feather=feather,
                                       mask_parts=ops.parts_widget(mask_parts), parser=parser),)


class VSPBFRSEGSToFaces:
    DESCRIPTION = ("Faces from Impact-Pack SEGS (any SEGS detector: YOLO face / person boxes, SAM, mediapipe, or "
                   "VSPBFR Faces to SEGS): RetinaFace finds the face in each SEG's crop region for the landmarks "
                   "the alignment needs; SEGs without a face are dropped. The paste changes pixels only inside the "
                   "SEG masks. Outputs as the detect node.")
    CATEGORY = "VSPBFR"
    RETURN_TYPES = ("VSPBFR_FACES", "IMAGE", "MASK", "INT", "INT")
    RETURN_NAMES = ("faces", "crops", "crop_masks", "count", "dropped")
    OUTPUT_TOOLTIPS = ("Where each face is and how it was aligned (for the paste node), limited to the SEG masks.",
                       "Aligned face crops [faces, size, size, 3], left to right.",
                       "Soft face masks in crop space, one per crop.", "Number of faces found.",
                       "Number of SEGs in which no matching face was found (left out).")
    FUNCTION = "convert"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The image the SEGS were detected in (a batch of one, the SEGS' size)."}),
            "segs": ("SEGS", {"tooltip": "SEGS from any Impact-Pack detector (or VSPBFR Faces to SEGS)."}),
            "facedetection": DETECTOR,
            "threshold": ("FLOAT", {"default": segs_ops.SEGS_THRESHOLD, "min": 0.0, "max": 1.0, "step": 0.01,
                                    "tooltip": "Minimum RetinaFace score in a SEG's crop. Lower than the detect "
                                    "node's 0.97 because the SEG already says a face is there and a face counts "
                                    "only when its box matches the SEG's box, so a false detection elsewhere in "
                                    "the crop is never taken; raise it to restore only clear faces."}),
            "face_size": ("INT", {"default": 512, "min": 16, "max": 2048, "step": 16, "tooltip": "Side of the "
                                  "aligned crops; 512 is the VSPBFR networks' own size."}),
        }}

    def convert(self, image, segs, facedetection, threshold, face_size):
        faces, dropped = segs_ops.segs_to_faces(image, segs, facedetection, threshold=threshold, size=face_size,
                                                 callback=host.Progress())
        crops, masks = ops.crops_output(faces)
        return (faces, crops, masks, len(faces), dropped)

