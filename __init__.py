"""ComfyUI entry point of the VSPBFR node pack.

Importing this file outside ComfyUI (plain Python, A1111, pytest) must not fail: the ComfyUI nodes
are imported only when ComfyUI's ``folder_paths`` module is importable.
"""
from __future__ import annotations

import importlib.util

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
WEB_DIRECTORY = "./web"

if importlib.util.find_spec("folder_paths") is not None and __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
