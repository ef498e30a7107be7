"""Drives the A1111 stand-in like webui.py does: start, "Reload UI", and the built-in parts around extensions.

start() follows A1111 1.10.1's order: options and state, built-in restorers (CodeFormer), ``load_scripts()``
(our ``scripts/vspbfr_a1111.py`` executes here), the UI (settings callbacks, txt2img scripts, Extras scripts),
the FastAPI app with the API, then ``app_started_callback(demo, app)``. reload_ui() follows the "Reload UI"
path: ``app_reload_callback``, ``script_unloaded_callback``, ``load_scripts()`` again (``shared.face_restorers``
is NOT reset), the UI again and ``app_started_callback`` with the same app.
"""
from __future__ import annotations

import os
from typing import Any

STANDIN_DIR = os.path.dirname(os.path.abspath(__file__))
FORGE_DIR = os.path.join(STANDIN_DIR, "forge")


def configure(data_dir: str) -> None:
    """Point modules.paths / paths_internal / shared at ``data_dir`` (its ``models`` folder is models_path)."""
    from modules import paths, paths_internal, shared

    models = os.path.join(data_dir, "models")
    for mod in (paths_internal, paths, shared):
        mod.data_path = data_dir
        mod.models_path = models


def reset(data_dir: str, *, use_cpu: tuple[str, ...] = ("all",)) -> None:
    """A fresh webui process state (the stand-in modules stay imported)."""
    from modules import (codeformer_model, errors, options, processing, script_callbacks, scripts, shared,
                         shared_options, shared_state)

    configure(data_dir)
    shared.cmd_opts.use_cpu = list(use_cpu)
    shared.cmd_opts.disable_safe_unpickle = False
    shared.face_restorers.clear()
    shared.options_templates = dict(shared_options.options_templates)
    shared.opts = options.Options(shared.options_templates)
    shared.state = shared_state.State()
    script_callbacks.clear_callbacks()
    scripts.scripts_data.clear()
    scripts.postprocessing_scripts_data.clear()
    scripts.extension_dirs.clear()
    errors.exception_records.clear()
    processing.fake_samples = None
    codeformer_model.codeformer = None


class WebUI:
    """What a started webui holds: the FastAPI app and the ui pieces the tests look at."""

    def __init__(self, app: Any, demo: Any):
        self.app = app
        self.demo = demo
        self.extras_inputs: list = []

    def client(self):
        from fastapi.testclient import TestClient

        return TestClient(self.app, raise_server_exceptions=False)


def _create_ui(webui: WebUI) -> None:
    import gradio as gr
    from modules import script_callbacks, scripts

    with gr.Blocks() as demo:
        script_callbacks.ui_settings_callback()                 # ui_settings.register_settings()
        scripts.scripts_txt2img.initialize_scripts(is_img2img=False)
        scripts.scripts_txt2img.setup_ui()
        scripts.scripts_img2img.initialize_scripts(is_img2img=True)
        scripts.scripts_img2img.setup_ui()
        webui.extras_inputs = scripts.scripts_postproc.setup_ui()
    webui.demo = demo


def _import_api_models() -> None:
    """The first import of modules.api.models in a webui process: it builds the options model now."""
    import importlib

    import modules.api.models

    importlib.reload(modules.api.models)


def start(data_dir: str, extension_dirs: list[str], *, use_cpu: tuple[str, ...] = ("all",),
          config: dict[str, Any] | None = None, nowebui: bool = False, api_imported_early: bool = False) -> WebUI:
    """Start the stand-in webui; ``config`` plays config.json (loaded before any script runs).

    ``nowebui``: the API-only order of ``webui.api_only()``: the API object is made first and builds the UI
    itself (so the settings callbacks run after the options model of the API was taken).
    ``api_imported_early``: ``modules.api`` is imported before our script runs, as on Forge / reForge and whenever
    an extension that loads earlier imports it (sd-webui-controlnet): the options model is then built without our
    settings. Otherwise it is built when the API object is made, after every script loaded (A1111's own order).
    """
    from fastapi import FastAPI
    from modules import call_queue, codeformer_model, script_callbacks, scripts, shared

    reset(data_dir, use_cpu=use_cpu)
    shared.opts.data.update(config or {})
    codeformer_model.setup_model(os.path.join(shared.models_path, "Codeformer"))
    scripts.extension_dirs[:] = list(extension_dirs)
    if api_imported_early:
        _import_api_models()
    scripts.load_scripts()
    if not api_imported_early:
        _import_api_models()
    from modules.api.api import Api

    webui = WebUI(FastAPI(), None)
    if nowebui:
        Api(webui.app, call_queue.queue_lock, create_ui=lambda: _create_ui(webui))
    else:
        _create_ui(webui)
        Api(webui.app, call_queue.queue_lock)
    script_callbacks.app_started_callback(webui.demo, webui.app)
    return webui


def reload_ui(webui: WebUI) -> WebUI:
    from modules import script_callbacks, scripts

    script_callbacks.app_reload_callback()
    script_callbacks.script_unloaded_callback()
    scripts.load_scripts()
    _create_ui(webui)
    script_callbacks.app_started_callback(webui.demo, webui.app)
    return webui


def settings_page(prefix: str = "vspbfr_") -> dict[str, Any]:
    """The components the Settings tab builds for the options whose key starts with ``prefix`` (A1111's
    ``ui_settings.create_setting_component``: ``component(label=..., value=<setting>, elem_id=..., **args)``)."""
    import gradio as gr
    from modules import shared

    out = {}
    with gr.Blocks():
        for key, info in shared.opts.data_labels.items():
            if not key.startswith(prefix):
                continue
            args = info.component_args() if callable(info.component_args) else info.component_args
            make = info.component or gr.Textbox
            value = shared.opts.data[key] if key in shared.opts.data else info.default
            out[key] = make(label=info.label, value=value, elem_id=f"setting_{key}", **(args or {}))
    return out
