"""Stand-ins for the parts of ComfyUI the node pack touches (``comfy.*``, ``folder_paths``), for plain-pytest tests.

They record what the pack asks of ComfyUI (loaded patchers, memory estimates, progress updates) and let a test
request an interrupt.  ``load_pack(models_dir, temp_dir)`` installs them into ``sys.modules`` and imports the
repository root as a package (as ComfyUI's ``load_custom_node`` does); ``unload_pack()`` removes everything again so
other test modules see a Python without ComfyUI.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
PACK = "vspbfr_pack_under_test"
STUB_NAMES = ("comfy", "comfy.model_management", "comfy.model_patcher", "comfy.utils", "folder_paths")


class InterruptProcessingException(Exception):
    pass


class State:
    """What the pack did, for assertions."""

    def __init__(self) -> None:
        self.loads: list[tuple[list, int]] = []       # (patchers, memory_required) per load_models_gpu call
        self.loaded: list = []                         # patchers currently "on the device"
        self.progress: list[tuple[int, int]] = []      # (value, total) per ProgressBar update
        self.interrupt_after: int | None = None        # raise at the first check after this many progress updates
        self.checks = 0
        self.fp16 = False
        self.bf16 = False


STATE = State()


def _module(name: str, **attrs) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__spec__ = importlib.util.spec_from_loader(name, loader=None)
    m.__dict__.update(attrs)
    return m


def _model_management() -> types.ModuleType:
    cpu = torch.device("cpu")

    def load_models_gpu(models, memory_required=0):
        STATE.loads.append((list(models), memory_required))
        for m in models:
            if m not in STATE.loaded:
                STATE.loaded.append(m)
                m.model.to(m.load_device)
                m.current_device = m.load_device

    def unload_all_models():
        for m in STATE.loaded:
            m.model.to(m.offload_device)
            m.current_device = m.offload_device
        STATE.loaded.clear()

    def throw_exception_if_processing_interrupted():
        STATE.checks += 1
        if STATE.interrupt_after is not None and len(STATE.progress) >= STATE.interrupt_after:
            raise InterruptProcessingException()

    return _module(
        "comfy.model_management", get_torch_device=lambda: cpu, unet_offload_device=lambda: cpu,
        intermediate_device=lambda: cpu, should_use_fp16=lambda device=None, model_params=0, **kw: STATE.fp16,
        should_use_bf16=lambda device=None, model_params=0, **kw: STATE.bf16, load_models_gpu=load_models_gpu,
        unload_all_models=unload_all_models, soft_empty_cache=lambda force=False: None,
        throw_exception_if_processing_interrupted=throw_exception_if_processing_interrupted,
        InterruptProcessingException=InterruptProcessingException)


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, current_device=None, **kwargs):
        self.model, self.load_device, self.offload_device, self.size = model, load_device, offload_device, size
        self.current_device = current_device or offload_device


class ProgressBar:
    def __init__(self, total):
        self.total, self.current = total, 0

    def update_absolute(self, value, total=None, preview=None):
        self.total = total if total is not None else self.total
        self.current = min(value, self.total)
        STATE.progress.append((self.current, self.total))

    def update(self, value):
        self.update_absolute(self.current + value)


def _folder_paths(models_dir: Path, temp_dir: Path, table: dict) -> types.ModuleType:
    def get_folder_paths(name):
        return list(table[name][0])

    def get_filename_list(name):
        dirs, exts = table[name]
        out = []
        for d in dirs:
            if os.path.isdir(d):
                for root, _, files in os.walk(d):
                    for f in files:
                        if not exts or os.path.splitext(f)[1].lower() in exts:
                            out.append(os.path.relpath(os.path.join(root, f), d))
        return sorted(set(out))

    def get_full_path(name, filename):
        if name not in table:
            return None
        for d in table[name][0]:
            p = os.path.join(d, filename)
            if os.path.isfile(p):
                return p
        return None

    def get_save_image_path(prefix, output_dir, width=0, height=0):
        return output_dir, prefix, 1, "", prefix

    return _module("folder_paths", folder_names_and_paths=table, models_dir=str(models_dir),
                   get_folder_paths=get_folder_paths, get_filename_list=get_filename_list, get_full_path=get_full_path,
                   get_temp_directory=lambda: str(temp_dir), get_save_image_path=get_save_image_path)


def load_pack(models_dir: Path, temp_dir: Path, table: dict | None = None) -> types.ModuleType:
    """Install the stubs and import the pack (root ``__init__.py``) as ComfyUI would; returns the package."""
    STATE.__init__()
    unload_pack()
    table = {} if table is None else table
    comfy = _module("comfy")
    mods = {"comfy": comfy, "comfy.model_management": _model_management(),
            "comfy.model_patcher": _module("comfy.model_patcher", ModelPatcher=ModelPatcher),
            "comfy.utils": _module("comfy.utils", ProgressBar=ProgressBar),
            "folder_paths": _folder_paths(models_dir, temp_dir, table)}
    for name in ("model_management", "model_patcher", "utils"):
        setattr(comfy, name, mods[f"comfy.{name}"])
    sys.modules.update(mods)
    spec = importlib.util.spec_from_file_location(PACK, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = module
    spec.loader.exec_module(module)
    return module


def unload_pack() -> None:
    for name in list(sys.modules):
        if name in STUB_NAMES or name == PACK or name.startswith(PACK + "."):
            del sys.modules[name]


def reset_state() -> State:
    """A clean record before a test (loads, progress, no interrupt, fp16/bf16 unsupported); returns STATE."""
    STATE.loads.clear()
    STATE.progress.clear()
    STATE.interrupt_after = None
    STATE.fp16 = STATE.bf16 = False
    return STATE


def models_folder(base: Path, detector: Path | None) -> tuple[Path, Path]:
    """``base/models`` with the tiny VSPBFR files in ``vspbfr/`` and ``detector`` (when given) in
    ``facedetection/``, and an empty ``base/temp``; returns (models, temp)."""
    import shutil

    from tiny_models import write_tiny_checkpoints

    models, temp = base / "models", base / "temp"
    write_tiny_checkpoints(models / "vspbfr")
    (models / "facedetection").mkdir()
    if detector is not None:
        shutil.copy(detector, models / "facedetection")
    temp.mkdir()
    return models, temp


def pack_env(pack: types.ModuleType, precision: str = "auto", **attrs) -> types.SimpleNamespace:
    """What the node tests use of a loaded pack: ``pack``, ``nodes`` (one instance per node id), the ``ops``,
    ``host``, ``handles`` and ``errors`` modules, and ``model`` (the loader node's output in ``precision``);
    ``attrs`` are added as they are."""
    env = types.SimpleNamespace(pack=pack, **attrs)
    env.nodes = {k: v() for k, v in pack.NODE_CLASS_MAPPINGS.items()}
    env.ops = sys.modules[PACK + ".nodes.ops"]
    env.host = sys.modules[PACK + ".nodes.comfy_host"]
    env.handles = sys.modules[PACK + ".nodes.handles"]
    env.errors = sys.modules[PACK + ".vspbfr_core.errors"]
    (env.model,) = env.nodes["VSPBFRModelLoader"].load("style_encoder_decoder.pt", "code_diffuser.pt",
                                                       "restoration_net.pt", precision)
    return env
