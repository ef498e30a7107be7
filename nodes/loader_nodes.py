"""VSPBFRModelLoader: the three VSPBFR network files -> VSPBFR_MODEL."""
from __future__ import annotations

import os

from ..vspbfr_core.checkpoints import OFFICIAL_FILES
from . import comfy_host as host
from . import ops


def _file_combo(kind: str, names: list[str]) -> tuple[list[str], dict]:
    official = OFFICIAL_FILES[kind]
    stem = os.path.splitext(official)[0]
    choices = sorted(set(names) | {official},
                     key=lambda n: (n != official, not os.path.basename(n).startswith(stem), n.lower()))
    return choices, {"default": official, "tooltip": f"The {stem} network file in the 'vspbfr' model folder "
                     f"(official {official} or its converted .safetensors). A missing file is reported when the "
                     "graph runs, with the `vspbfr download` command that fetches it."}


class VSPBFRModelLoader:
    DESCRIPTION = ("Loads the three VSPBFR networks (style encoder + StyleGAN2 decoder, code diffuser, SMART "
                   "restoration net) from the 'vspbfr' model folder. The model joins ComfyUI's memory manager: it is "
                   "moved to the GPU only while a VSPBFR node runs and is freed by 'Unload models'.")
    CATEGORY = "VSPBFR"
    RETURN_TYPES = ("VSPBFR_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The VSPBFR networks, for the style prompt, restore and all-in-one nodes.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        names = host.model_file_names()
        return {"required": {
            "style_encoder_decoder": _file_combo("style_encoder_decoder", names),
            "code_diffuser": _file_combo("code_diffuser", names),
            "restoration_net": _file_combo("restoration_net", names),
            "precision": (list(ops.PRECISIONS), {"default": "auto", "tooltip": "auto: ComfyUI's choice for this "
                          "device (fp16/bf16 on most GPUs, fp32 on the CPU). The W+ diffusion always runs in fp32."}),
        }}

    def load(self, style_encoder_decoder, code_diffuser, restoration_net, precision):
        files = {"style_encoder_decoder": style_encoder_decoder, "code_diffuser": code_diffuser,
                 "restoration_net": restoration_net}
        return (ops.load_model(files, precision),)
