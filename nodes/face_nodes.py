"""VSPBFRDetectFaces (IMAGE or LATENT -> faces, aligned crops) and VSPBFRPasteFaces (crops -> IMAGE)."""
from __future__ import annotations

from . import comfy_host as host
from . import ops

IMAGE_INPUTS = {
    "image": ("IMAGE", {"tooltip": "The images (or video frames) to work on. Leave it unconnected to use LATENT + VAE."}),
    "latent": ("LATENT", {"tooltip": "Instead of an IMAGE: a latent, decoded with the VAE input."}),
    "vae": ("VAE", {"tooltip": "The VAE that decodes the LATENT input (and encodes the LATENT output)."}),
}
DETECTOR = (list(ops.DETECTORS), {"default": "auto", "tooltip": "RetinaFace backbone. auto: whichever file is there "
            "(detection_Resnet50_Final.pth first, else detection_mobilenet0.25_Final.pth). Weights are looked up in "
            "models/facedetection, models/facexlib, then models/vspbfr; never downloaded."})
SELECTION = ("STRING", {"default": "all", "tooltip": "Which faces: all, largest, center, or face indices such as "
             "0,2 (numbers as drawn on the detect preview, in the chosen order). Temporal on: the indices are track "
             "ids (people numbered by first appearance, then left to right); largest / center choose per frame."})
MASK_SHAPE = (list(ops.MASK_SHAPES), {"default": ops.DEFAULT_MASK_SHAPE, "tooltip": "Paste-back mask. square: "
              "the whole crop with soft sides (facexlib's); ellipse: the face oval; landmarks: a face shape "
              "placed by the five landmarks (keeps the hair, ears and background; no weights); parsing: a "
              "face-parsing network keeps only the face parts (parsing_parsenet.pth in models/facedetection, "
              "facexlib or vspbfr: `vspbfr download --only parsing`)."})
# Optional and last (after every older widget), so saved workflows keep loading with their values in place
MASK_WIDGETS = {
    "mask": ("MASK", {"tooltip": "Optional: where the paste may change pixels (white) and where never (black), "
             "e.g. a hand in front of the face. The images' size; one mask for all images or one per image."}),
    "mask_parts": ("STRING", {"default": "all", "tooltip": "mask_shape parsing only: the face parts pasted, "
                   "comma-separated from skin, brows, eyes, glasses, ears, nose, mouth, lips (all: every one; leave "
                   "out glasses to keep the original glasses). Hair, hat, earrings, necklace, neck, cloth and "
                   "background are never pasted over."}),
    "parser": (list(ops.PARSERS), {"default": "parsenet", "tooltip": "mask_shape parsing only: the face-parsing "
               "network (parsing_parsenet.pth or parsing_bisenet.pth)."}),
}
# Optional and last (after every older widget), so saved workflows keep loading with their values in place; the
# defaults (temporal off) give exactly the per-image results.
TEMPORAL_WIDGETS = {
    "temporal": ("BOOLEAN", {"default": False, "tooltip": "Treat the IMAGE batch as consecutive video frames (what "
                 "VHS Load Video or core Load Video outputs): faces are tracked, so a person keeps the same seed "
                 "noise in every frame, selection / max_faces refer to tracks (numbered by first appearance, then "
                 "left to right), and alignment and style prompts are smoothed over time. Off (default): every "
                 "image on its own, right for single images and unrelated batches."}),
    "smooth_alignment": ("FLOAT", {"default": 2.0, "min": 0.0, "max": 10.0, "step": 0.1, "tooltip": "Temporal only: "
                         "steadies each face's alignment (its five landmarks) against detector jitter; the crop and "
                         "the paste-back follow the smoothed landmarks. Gaussian sigma in frames; centred filter "
                         "(looks ahead as far as back), so no lag; real motion and cuts are kept; single-frame "
                         "outliers are rejected. 0: off."}),
    "smooth_wplus": ("FLOAT", {"default": 2.0, "min": 0.0, "max": 10.0, "step": 0.1, "tooltip": "Temporal only: "
                     "smooths each face's W+ code and style prompt over time (less flicker of the restored details). "
                     "Gaussian sigma in frames; centred filter, so no lag. 0: off."}),
}


class VSPBFRDetectFaces:
    DESCRIPTION = ("Finds faces with RetinaFace in each image of the batch, selects and orders them, and cuts out "
                   "FFHQ-aligned crops. Any IMAGE node may process the crops before they are pasted back. No face: "
                   "count 0, one black crop, and paste returns the images unchanged.")
    CATEGORY = "VSPBFR"
    RETURN_TYPES = ("VSPBFR_FACES", "IMAGE", "MASK", "INT", "IMAGE")
    RETURN_NAMES = ("faces", "crops", "crop_masks", "count", "image")
    OUTPUT_TOOLTIPS = ("Where each face is and how it was aligned (for the paste node).",
                       "Aligned face crops [faces, size, size, 3], all frames' faces in order.",
                       "Soft face masks in crop space, one per crop.", "Number of faces found in the whole batch.",
                       "The images the faces were found in (the decoded LATENT when one was given).")
    FUNCTION = "detect"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "facedetection": DETECTOR,
            "threshold": ("FLOAT", {"default": ops.DEFAULT_THRESHOLD, "min": 0.0, "max": 1.0, "step": 0.01,
                                    "tooltip": "Minimum face score; lower finds more (and more false) faces."}),
            "min_size": ("INT", {"default": 0, "min": 0, "max": 8192, "tooltip": "Ignore faces whose box is "
                                 "smaller than this many pixels on its short side (0: keep all)."}),
            "max_faces": ("INT", {"default": 0, "min": 0, "max": 256, "tooltip": "At most this many faces per "
                                  "image, the largest ones (0: no limit). Temporal on: the first N people to "
                                  "appear (tracks 0..N-1)."}),
            "selection": SELECTION,
            "order": (list(ops.ORDERS), {"default": "left-right", "tooltip": "How faces are numbered in each "
                                         "image (the indices used by selection). Not used with temporal on (faces "
                                         "are numbered by track)."}),
            "face_size": ("INT", {"default": 512, "min": 16, "max": 2048, "step": 16, "tooltip": "Side of the "
                                  "aligned crops; 512 is the VSPBFR networks' own size."}),
        }, "optional": {**IMAGE_INPUTS, **TEMPORAL_WIDGETS}}

    def detect(self, facedetection, threshold, min_size, max_faces, selection, order, face_size,
               image=None, latent=None, vae=None, temporal=False, smooth_alignment=2.0, smooth_wplus=2.0):
        images = ops.input_images(image, latent, vae)
        faces = ops.find_faces(images, facedetection, threshold=threshold, min_size=min_size, max_faces=max_faces,
                               selection=selection, order=order, size=face_size, temporal=temporal,
                               smooth_alignment=smooth_alignment, smooth_wplus=smooth_wplus, callback=host.Progress())
        crops, masks = ops.crops_output(faces)
        return {"ui": ops.detect_preview(images, faces), "result": (faces, crops, masks, len(faces), images)}


class VSPBFRPasteFaces:
    DESCRIPTION = ("Pastes restored (or otherwise edited) face crops back into the original images with a soft "
                   "mask, optional colour matching and upscaling. Only the crops' change is warped back, so pixels "
                   "outside the masks are untouched. Optionally encodes the result for a low-denoise KSampler pass.")
    CATEGORY = "VSPBFR"
    RETURN_TYPES = ("IMAGE", "MASK", "LATENT")
    RETURN_NAMES = ("image", "mask", "latent")
    OUTPUT_TOOLTIPS = ("The images with the faces pasted back.", "Where faces were pasted (0..1).",
                       "The result encoded with the VAE input (connect a VAE to use this).")
    FUNCTION = "paste"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The original images, as given to (or output by) the detect node."}),
            "faces": ("VSPBFR_FACES", {"tooltip": "The faces output of the detect node."}),
            "restored": ("IMAGE", {"tooltip": "One crop per face, same order as the detect node's crops (any size)."}),
            "visibility": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                     "tooltip": "1: the restored face; 0: the original face."}),
            "feather": ("FLOAT", {"default": 50.0, "min": 0.0, "max": 230.0, "step": 1.0, "tooltip": "Soft edge "
                                  "width, in pixels of a 512 crop (0: hard edge)."}),
            "mask_shape": MASK_SHAPE,
            "color_correction": (list(ops.COLOR_CORRECTIONS), {"default": "none", "tooltip": "Match the restored "
                                 "face's colours to the original: meanstd (Lab statistics) or wavelet (low "
                                 "frequencies)."}),
            "upscale": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 8.0, "step": 0.5, "tooltip": "Scale of the "
                                  "output; faces are pasted at the new scale."}),
        }, "optional": {"vae": IMAGE_INPUTS["vae"], **MASK_WIDGETS},
            "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"}}

    def paste(self, image, faces, restored, visibility, feather, mask_shape, color_correction, upscale, vae=None,
              mask=None, mask_parts="all", parser="parsenet", prompt=None, unique_id=None):
        out, out_mask = ops.paste(image, faces, restored, visibility=visibility, feather=feather,
                                  mask_shape=mask_shape, color_correction=color_correction, upscale=upscale,
                                  mask=mask, mask_parts=ops.parts_widget(mask_parts), parser=parser)
        return (out, out_mask, ops.latent_output(vae, out, prompt, unique_id, 2))
