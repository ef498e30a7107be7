"""Stand-in of modules.scripts_postprocessing: PostprocessedImage, ScriptPostprocessing and its runner."""
from __future__ import annotations

import dataclasses
import os

import gradio as gr

from modules import errors, shared


@dataclasses.dataclass
class PostprocessedImageSharedInfo:
    target_width: int = None
    target_height: int = None


class PostprocessedImage:
    def __init__(self, image):
        self.image = image
        self.info = {}
        self.shared = PostprocessedImageSharedInfo()
        self.extra_images = []
        self.nametags = []
        self.disable_processing = False
        self.caption = None


class ScriptPostprocessing:
    filename = None
    controls = None
    args_from = None
    args_to = None
    order = 1000
    name = None
    group = None

    def ui(self):
        pass

    def process(self, pp: PostprocessedImage, **args):
        pass

    def process_firstpass(self, pp: PostprocessedImage, **args):
        pass

    def image_changed(self):
        pass


def wrap_call(func, filename, funcname, *args, default=None, **kwargs):
    try:
        return func(*args, **kwargs)
    except Exception as e:
        errors.display(e, f"calling {filename}/{funcname}")
    return default


class ScriptPostprocessingRunner:
    def __init__(self):
        self.scripts = None
        self.ui_created = False

    def initialize_scripts(self, scripts_data):
        self.scripts = []
        for data in scripts_data:
            script = data.script_class()
            script.filename = data.path
            if script.name == "Simple Upscale":
                continue
            self.scripts.append(script)

    def create_script_ui(self, script, inputs):
        script.args_from = len(inputs)
        script.controls = wrap_call(script.ui, script.filename, "ui")
        for control in script.controls.values():
            control.custom_script_source = os.path.basename(script.filename)
        inputs += list(script.controls.values())
        script.args_to = len(inputs)

    def scripts_in_preferred_order(self):
        if self.scripts is None:
            import modules.scripts
            self.initialize_scripts(modules.scripts.postprocessing_scripts_data)
        order = shared.opts.postprocessing_operation_order
        hidden = set(shared.opts.postprocessing_disable_in_extras)

        def position(name):
            return order.index(name) if name in order else len(self.scripts)

        kept = [s for s in self.scripts if s.name not in hidden]
        keys = {s.name: (position(s.name), s.order, s.name, i) for i, s in enumerate(kept)}
        return sorted(kept, key=lambda s: keys[s.name])

    def setup_ui(self):
        inputs = []
        for script in self.scripts_in_preferred_order():
            with gr.Row() as group:
                self.create_script_ui(script, inputs)
            script.group = group
        self.ui_created = True
        return inputs

    def run(self, pp: PostprocessedImage, args):
        planned = []
        for script in self.scripts_in_preferred_order():
            values = args[script.args_from:script.args_to]
            planned.append((script, dict(zip(script.controls.keys(), values))))
        for script, process_args in planned:
            script.process_firstpass(pp, **process_args)
        for script, process_args in planned:
            if shared.state.skipped:
                break
            shared.state.job = script.name
            if not pp.disable_processing:
                script.process(pp, **process_args)

    def create_args_for_run(self, scripts_args):
        if not self.ui_created:
            with gr.Blocks(analytics_enabled=False):
                self.setup_ui()
        scripts = self.scripts_in_preferred_order()
        args = [None] * max(s.args_to for s in scripts)
        for script in scripts:
            given = scripts_args.get(script.name, None)
            if given is not None:
                for i, name in enumerate(script.controls):
                    args[script.args_from + i] = given.get(name, None)
        return args

    def image_changed(self):
        for script in self.scripts_in_preferred_order():
            script.image_changed()
