"""The VSPBFR ComfyUI nodes: one NODE_CONFIG table builds both mappings (KJNodes pattern).

Importing registers the ``vspbfr``, ``facedetection`` and ``facexlib`` model folders append-safely and nothing else:
no model is loaded and nothing is downloaded until a node runs.
"""
from __future__ import annotations

from . import comfy_host
from .face_nodes import VSPBFRDetectFaces, VSPBFRPasteFaces
from .identity_nodes import VSPBFRIdentityScore
from .loader_nodes import VSPBFRModelLoader
from .restore_nodes import VSPBFRFaceRestore, VSPBFRRestoreFaces, VSPBFRStylePrompt
from .segs_nodes import VSPBFRFacesToSEGS, VSPBFRSEGSToFaces

NODE_CONFIG = {
    "VSPBFRModelLoader": {"class": VSPBFRModelLoader, "name": "VSPBFR Load Model"},
    "VSPBFRDetectFaces": {"class": VSPBFRDetectFaces, "name": "VSPBFR Detect Faces (RetinaFace)"},
    "VSPBFRStylePrompt": {"class": VSPBFRStylePrompt, "name": "VSPBFR W+ Style Prompt"},
    "VSPBFRRestoreFaces": {"class": VSPBFRRestoreFaces, "name": "VSPBFR SMART Restore"},
    "VSPBFRPasteFaces": {"class": VSPBFRPasteFaces, "name": "VSPBFR Paste Faces Back"},
    "VSPBFRFaceRestore": {"class": VSPBFRFaceRestore, "name": "VSPBFR Face Restore (all-in-one)"},
    "VSPBFRIdentityScore": {"class": VSPBFRIdentityScore, "name": "VSPBFR Identity Score"},
    "VSPBFRFacesToSEGS": {"class": VSPBFRFacesToSEGS, "name": "VSPBFR Faces to SEGS"},
    "VSPBFRSEGSToFaces": {"class": VSPBFRSEGSToFaces, "name": "VSPBFR SEGS to Faces"},
}

NODE_CLASS_MAPPINGS = {node_id: entry["class"] for node_id, entry in NODE_CONFIG.items()}
NODE_DISPLAY_NAME_MAPPINGS = {node_id: entry["name"] for node_id, entry in NODE_CONFIG.items()}

comfy_host.register_model_folders()
comfy_host.install_hints()

__all__ = ["NODE_CONFIG", "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
