"""Stand-in of modules.script_callbacks: the callback lists the adapter uses (cleared by load_scripts)."""
from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any, Callable

from modules import errors


@dataclasses.dataclass
class ScriptCallback:
    script: str
    callback: Callable
    name: str | None = None


callback_map: dict[str, list[ScriptCallback]] = dict(
    callbacks_app_started=[],
    callbacks_ui_settings=[],
    callbacks_script_unloaded=[],
    callbacks_on_reload=[],
    callbacks_before_ui=[],
)


def clear_callbacks():
    for callbacks in callback_map.values():
        callbacks.clear()


def add_callback(callbacks, fun, *, name=None, category='unknown', filename=None):
    if filename is None:
        frame = inspect.stack()[2]
        filename = frame.filename if frame else 'unknown file'
    callbacks.append(ScriptCallback(filename, fun, name or f"{os.path.basename(filename)}/{category}"))


def _run(category: str, *args: Any) -> None:
    for c in list(callback_map['callbacks_' + category]):
        try:
            c.callback(*args)
        except Exception:
            errors.report(f"Error executing callback {c.name} for {category}", exc_info=True)


def app_started_callback(demo, app):
    _run('app_started', demo, app)


def app_reload_callback():
    _run('on_reload')


def ui_settings_callback():
    _run('ui_settings')


def script_unloaded_callback():
    _run('script_unloaded')


def before_ui_callback():
    _run('before_ui')


def on_app_started(callback, *, name=None):
    add_callback(callback_map['callbacks_app_started'], callback, name=name, category='app_started')


def on_before_reload(callback, *, name=None):
    add_callback(callback_map['callbacks_on_reload'], callback, name=name, category='on_reload')


def on_ui_settings(callback, *, name=None):
    add_callback(callback_map['callbacks_ui_settings'], callback, name=name, category='ui_settings')


def on_script_unloaded(callback, *, name=None):
    add_callback(callback_map['callbacks_script_unloaded'], callback, name=name, category='script_unloaded')


def on_before_ui(callback, *, name=None):
    add_callback(callback_map['callbacks_before_ui'], callback, name=name, category='before_ui')
