"""Stand-in of modules.scripts: Script, AlwaysVisible, load_scripts() and the txt2img/img2img runner.

load_scripts() follows A1111: callbacks are cleared; every ``scripts/*.py`` of the webui and of each
enabled extension is executed as its own module, with the extension folder prepended to ``sys.path``
only while the file executes; every class in the module namespace that subclasses ``Script`` or
``ScriptPostprocessing`` (the base classes included, if imported by name) is registered.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import sys

from modules import errors, paths, script_callbacks, script_loading, scripts_postprocessing

AlwaysVisible = object()
extension_dirs: list[str] = []      # enabled extensions, set by standin.start()


class PostprocessImageArgs:
    def __init__(self, image):
        self.image = image


class Script:
    name = None
    section = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    group = None
    create_group = True
    infotext_fields = None
    paste_field_names = None
    setup_for_ui_only = False
    controls = None

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def run(self, p, *args):
        pass

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def postprocess_image(self, p, pp, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass


current_basedir = paths.script_path


def basedir():
    return current_basedir


@dataclasses.dataclass
class ScriptFile:
    basedir: str
    filename: str
    path: str


@dataclasses.dataclass
class ScriptClassData:
    script_class: type
    path: str
    basedir: str
    module: object


scripts_data: list[ScriptClassData] = []
postprocessing_scripts_data: list[ScriptClassData] = []


def list_scripts(scriptdirname, extension):
    found = []
    for base in [paths.script_path] + list(extension_dirs):
        folder = os.path.join(base, scriptdirname)
        if os.path.isdir(folder):
            for name in sorted(os.listdir(folder)):
                path = os.path.join(folder, name)
                if name.endswith(extension) and os.path.isfile(path):
                    found.append(ScriptFile(base, name, path))
    return found


def load_scripts():
    global current_basedir, scripts_txt2img, scripts_img2img, scripts_postproc
    scripts_data.clear()
    postprocessing_scripts_data.clear()
    script_callbacks.clear_callbacks()
    syspath = sys.path
    for scriptfile in list_scripts("scripts", ".py"):
        try:
            if scriptfile.basedir != paths.script_path:
                sys.path = [scriptfile.basedir] + sys.path
            current_basedir = scriptfile.basedir
            module = script_loading.load_module(scriptfile.path)
            for obj in module.__dict__.values():
                if not inspect.isclass(obj):
                    continue
                if issubclass(obj, Script):
                    scripts_data.append(ScriptClassData(obj, scriptfile.path, scriptfile.basedir, module))
                elif issubclass(obj, scripts_postprocessing.ScriptPostprocessing):
                    postprocessing_scripts_data.append(ScriptClassData(obj, scriptfile.path, scriptfile.basedir,
                                                                       module))
        except Exception:
            errors.report(f"Error loading script: {scriptfile.filename}", exc_info=True)
        finally:
            sys.path = syspath
            current_basedir = paths.script_path
    scripts_txt2img = ScriptRunner()
    scripts_img2img = ScriptRunner()
    scripts_postproc = scripts_postprocessing.ScriptPostprocessingRunner()


class ScriptRunner:
    def __init__(self):
        self.scripts: list[Script] = []
        self.alwayson_scripts: list[Script] = []
        self.selectable_scripts: list[Script] = []
        self.inputs = [None]

    def initialize_scripts(self, is_img2img):
        self.scripts.clear()
        self.alwayson_scripts.clear()
        self.selectable_scripts.clear()
        for data in scripts_data:
            script = data.script_class()
            script.filename = data.path
            script.is_txt2img = not is_img2img
            script.is_img2img = is_img2img
            visibility = script.show(is_img2img)
            if visibility is AlwaysVisible:
                script.alwayson = True
                self.scripts.append(script)
                self.alwayson_scripts.append(script)
            elif visibility:
                self.scripts.append(script)
                self.selectable_scripts.append(script)

    def setup_ui(self):
        for script in self.alwayson_scripts:
            script.args_from = len(self.inputs)
            controls = script.ui(script.is_img2img) or []
            script.controls = controls
            self.inputs += list(controls)
            script.args_to = len(self.inputs)
        return self.inputs

    def _call(self, method, p, *extra):
        for script in self.alwayson_scripts:
            try:
                script_args = p.script_args[script.args_from:script.args_to]
                getattr(script, method)(p, *extra, *script_args)
            except Exception:
                errors.report(f"Error running {method}: {script.filename}", exc_info=True)

    def before_process(self, p):
        self._call("before_process", p)

    def process(self, p):
        self._call("process", p)

    def postprocess_image(self, p, pp):
        self._call("postprocess_image", p, pp)

    def postprocess(self, p, processed):
        self._call("postprocess", p, processed)


scripts_txt2img: ScriptRunner = None
scripts_img2img: ScriptRunner = None
scripts_postproc: scripts_postprocessing.ScriptPostprocessingRunner = None
