"""Fake gradio for the A1111 stand-in: components only record their arguments; layouts are context managers."""
from __future__ import annotations

from typing import Any

__version__ = "3.41.2-standin"

_context: list["Block"] = []


class Block:
    """Any gradio block: remembers its keyword arguments and the layout it was created in."""

    def __init__(self, value: Any = None, **kwargs: Any):
        self.value = value
        self.kwargs = kwargs
        self.label = kwargs.get("label")
        self.elem_id = kwargs.get("elem_id")
        self.visible = kwargs.get("visible", True)
        self.children: list[Block] = []
        if _context:
            _context[-1].children.append(self)

    def __enter__(self):
        _context.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        _context.pop()

    def change(self, fn: Any = None, **kwargs: Any) -> None:
        return None


class Component(Block):
    pass


class Checkbox(Component):
    pass


class Slider(Component):
    def __init__(self, minimum: float = 0, maximum: float = 100, value: Any = None, *, step: float | None = None,
                 **kwargs: Any):
        super().__init__(value=minimum if value is None else value, **kwargs)
        self.minimum, self.maximum, self.step = minimum, maximum, step


class Number(Component):
    pass


class Textbox(Component):
    pass


class Dropdown(Component):
    def __init__(self, choices: list | None = None, value: Any = None, **kwargs: Any):
        super().__init__(value=value, **kwargs)
        self.choices = list(choices or [])


class Radio(Dropdown):
    pass


class HTML(Component):
    pass


class Markdown(Component):
    pass


class Row(Block):
    pass


class Column(Block):
    pass


class Group(Block):
    pass


class Accordion(Block):
    pass


class Blocks(Block):
    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)


def update(**kwargs: Any) -> dict:
    return {"__type__": "update", **kwargs}
