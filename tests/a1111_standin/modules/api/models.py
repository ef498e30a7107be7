"""Stand-in of modules.api.models: the response model of ``GET /sdapi/v1/options``.

As in A1111 1.10.1 (and Forge / reForge), the model is built ONCE, from the options known at the moment this module
is first imported, and FastAPI drops every key outside it from the answer: options added after that import are
invisible to ``GET /sdapi/v1/options`` unless an extension does something about it.
"""
from typing import Any, Optional

from pydantic import Field, create_model

from modules import shared


def build_options_model():
    fields = {}
    for key, metadata in shared.opts.data_labels.items():
        opt_type = shared.opts.typemap.get(type(metadata.default), type(metadata.default)) if metadata.default \
            else Any
        fields[key] = (Optional[opt_type], Field(default=metadata.default, description=metadata.label))
    return create_model("Options", **fields)


OptionsModel = build_options_model()
