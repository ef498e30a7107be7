"""ComfyUI entry point of the VSPBFR node pack.

Importing this file outside ComfyUI (plain Python, A1111, pytest) must not fail: the ComfyUI nodes
are imported only when ComfyUI's ``folder_paths`` module is importable. Importing never downloads
anything and never loads a model.
"""
from __future__ import annotations

import importlib.util
import sys

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
WEB_DIRECTORY = "./web"


def _in_comfyui() -> bool:
    if "folder_paths" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("folder_paths") is not None
    except (ImportError, ValueError):
        return False


if __package__ and _in_comfyui():
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
