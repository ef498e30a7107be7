"""VSPBFRStylePrompt (W+ style-prompt diffusion), VSPBFRRestoreFaces (SMART restoration) and the all-in-one
VSPBFRFaceRestore."""
from __future__ import annotations

from . import comfy_host as host
from . import identity_ops, ops
from .face_nodes import DETECTOR, IMAGE_INPUTS, MASK_SHAPE, MASK_WIDGETS, SELECTION, TEMPORAL_WIDGETS
from .identity_nodes import CANDIDATES, IDENTITY, IDENTITY_WIDGETS, REFERENCE, REFERENCE_MIX

MODEL = ("VSPBFR_MODEL", {"tooltip": "The networks from the VSPBFR Load Model node."})
CROPS = ("IMAGE", {"tooltip": "Aligned face crops (the detect node's crops, possibly edited)."})
SEED = ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True, "tooltip":
                "Noise seed. Each face draws from (seed, its index in its image), so a face restores the same way "
                "in any batch; use the same seed on the style prompt and restore nodes."})
FACES = ("VSPBFR_FACES", {"tooltip": "Optional: the detect node's faces, so each face is seeded by its index in "
                          "its own image (temporal on: by its track id, and W+ / style prompts are smoothed per "
                          "track), exactly as the all-in-one node does."})
FIDELITY = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": "Style prompt mix "
                      "(saved as 'fidelity'; NOT CodeFormer's fidelity, whose 1 means closest to the input): 1 is "
                      "the diffused visual style prompt (official VSPBFR); lower values follow the degraded face's "
                      "own W+ code more, i.e. stay closer to the input."})
KEEP_GRAY = ("BOOLEAN", {"default": True, "tooltip": "A face whose crop is gray (equal R, G, B: a black-and-white "
                         "photo, which LoadImage gives as RGB) comes back gray. Off: keep the colours the network "
                         "invents."})
BANK_SCALE = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 4.0, "step": 0.05, "tooltip": "Strength of the "
                        "StyleGAN feature bank (generative prior) in the decoder: 1 official, lower trusts the input "
                        "more, higher the prior."})


class VSPBFRStylePrompt:
    DESCRIPTION = ("W+ style-prompt diffusion: encodes each aligned crop into StyleGAN W+ and refines it with the "
                   "4-step code diffuser into a visual style prompt. Optional: the restore node computes it itself.")
    CATEGORY = "VSPBFR"
    RETURN_TYPES = ("VSPBFR_STYLE",)
    RETURN_NAMES = ("style",)
    OUTPUT_TOOLTIPS = ("Per face: the encoder's W+ and the diffused style prompt.",)
    FUNCTION = "prompt"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": MODEL, "crops": CROPS, "seed": SEED}, "optional": {"faces": FACES}}

    def prompt(self, model, crops, seed, faces=None):
        return (ops.style_prompts(model, crops, seed, faces, callback=host.Progress()),)


class VSPBFRRestoreFaces:
    DESCRIPTION = ("SMART restoration of aligned face crops, guided by the visual style prompt and the StyleGAN "
                   "feature bank. Outputs crops at the model's resolution (512) for the paste node or any IMAGE node.")
    CATEGORY = "VSPBFR"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("restored",)
    OUTPUT_TOOLTIPS = ("Restored face crops, one per input crop, same order.",)
    FUNCTION = "restore"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": MODEL, "crops": CROPS, "seed": SEED, "fidelity": FIDELITY,
                             "bank_scale": BANK_SCALE},
                "optional": {"style": ("VSPBFR_STYLE", {"tooltip": "Style prompts of these crops; computed here "
                                       "when unconnected."}), "faces": FACES, "keep_gray": KEEP_GRAY,
                             "candidates": CANDIDATES, "identity": IDENTITY, "reference_mix": REFERENCE_MIX,
                             "reference": REFERENCE}}   # new widgets last: IDENTITY_WIDGETS

    def restore(self, model, crops, seed, fidelity, bank_scale, style=None, faces=None, keep_gray=True, candidates=1,
                identity="arcface", reference_mix=0.0, reference=None):
        restored = ops.restore_crops(model, crops, seed=seed, fidelity=fidelity, bank_scale=bank_scale, style=style,
                                     faces=faces, keep_gray=keep_gray, callback=host.Progress(),
                                     identity=ops.identity_settings(candidates, identity, reference_mix=reference_mix,
                                                                    reference=reference))
        return {"ui": ops.compare_preview(crops, restored, crops=True), "result": (restored,)}


class VSPBFRFaceRestore:
    DESCRIPTION = ("One-node face restoration (detect, W+ style prompt, SMART restore, paste back) with the widgets "
                   "of facerestore_cf / ReActor. Frames without faces pass through unchanged. Optional identity: "
                   "best-of-N candidates, reference photos of the person, restoring only that person's faces. "
                   "temporal: the IMAGE batch is video frames (face tracks, smoothing over time, bounded memory).")
    CATEGORY = "VSPBFR"
    RETURN_TYPES = ("IMAGE", "MASK", "INT", "LATENT", "STRING")
    RETURN_NAMES = ("image", "mask", "count", "latent", "identity")
    OUTPUT_TOOLTIPS = ("The restored images.", "Where faces were pasted (0..1).", "Faces restored in the batch.",
                       "The result encoded with the VAE input (connect a VAE to use this).",
                       "Identity scores per face, one block per image (which candidate was kept, likeness to the "
                       "input and the reference); 'identity off' when no identity network ran.")
    FUNCTION = "restore"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": MODEL, "facedetection": DETECTOR, "fidelity": FIDELITY,
            "visibility": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                     "tooltip": "1: the restored face; 0: the original face."}),
            "only_center_face": ("BOOLEAN", {"default": False, "tooltip": "Restore only the face nearest the "
                                             "image centre (overrides selection)."}),
            "selection": SELECTION,
            "upscale": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 8.0, "step": 0.5,
                                  "tooltip": "Scale of the output; faces are pasted at the new scale."}),
            "seed": SEED,
        }, "optional": {**IMAGE_INPUTS, "keep_gray": KEEP_GRAY, **IDENTITY_WIDGETS, "reference": REFERENCE,
                        **TEMPORAL_WIDGETS, "mask_shape": MASK_SHAPE, **MASK_WIDGETS},
            "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"}}

    def restore(self, model, facedetection, fidelity, visibility, only_center_face, selection, upscale, seed,
                image=None, latent=None, vae=None, keep_gray=True, reference=None, prompt=None, unique_id=None,
                temporal=False, smooth_alignment=2.0, smooth_wplus=2.0, mask_shape=ops.DEFAULT_MASK_SHAPE, mask=None,
                mask_parts="all", parser="parsenet",
                **identity):                        # the IDENTITY_WIDGETS, by name (ops.identity_settings)
        images = ops.input_images(image, latent, vae)
        settings = ops.identity_settings(reference=reference, **identity)
        out, mask, count, faces, records = ops.face_restore(
            model, images, detector=facedetection, seed=seed, fidelity=fidelity, visibility=visibility,
            selection=selection, upscale=upscale, only_center_face=only_center_face, keep_gray=keep_gray,
            identity=settings, temporal=ops.temporal_settings(temporal, smooth_alignment, smooth_wplus),
            mask_shape=mask_shape, mask=mask, mask_parts=ops.parts_widget(mask_parts), parser=parser,
            callback=host.Progress())
        latent_out = ops.latent_output(vae, out, prompt, unique_id, 3)
        report = identity_ops.restore_report(faces, records, settings, images.shape[0])
        return {"ui": ops.compare_preview(images, out), "result": (out, mask, count, latent_out, report)}
