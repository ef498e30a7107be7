"""Fake gradio for the A1111 stand-in: components only record their arguments; layouts are context managers.

As in gradio 3.41 and 4.x, a callable ``value`` is evaluated at every page load: :meth:`Block.page_load` plays
that. Event listeners (``change``, ``click``) are recorded and can be fired with :meth:`Block.fire`.
"""
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
        self.listeners: dict[str, list[tuple[Any, list, list]]] = {}
        if _context:
            _context[-1].children.append(self)

    def page_load(self) -> Any:
        """The value a browser shows after (re)loading the page: callables are called then."""
        return self.value() if callable(self.value) else self.value

    def __enter__(self):
        _context.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        _context.pop()

    def _listen(self, event: str, fn: Any, inputs: Any, outputs: Any) -> None:
        def as_list(x: Any) -> list:
            return [] if x is None else list(x) if isinstance(x, (list, tuple)) else [x]
        self.listeners.setdefault(event, []).append((fn, as_list(inputs), as_list(outputs)))

    def change(self, fn: Any = None, inputs: Any = None, outputs: Any = None, **kwargs: Any) -> None:
        self._listen("change", fn, inputs, outputs)

    def click(self, fn: Any = None, inputs: Any = None, outputs: Any = None, **kwargs: Any) -> None:
        self._listen("click", fn, inputs, outputs)

    def fire(self, event: str) -> None:
        """Run the ``event`` listeners as the browser would: input values in, outputs' values replaced."""
        for fn, inputs, outputs in self.listeners.get(event, []):
            result = fn(*[i.value for i in inputs])
            results = result if len(outputs) > 1 else (result,)
            for block, value in zip(outputs, results):
                block.value = value


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


class Button(Component):
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
