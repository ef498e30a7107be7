"""Stand-in of the webui's built-in Extras script "CodeFormer" (order 3000); it only records its calls."""
from modules import codeformer_model, scripts_postprocessing, ui_components
import gradio as gr

calls = []


class ScriptPostprocessingCodeFormer(scripts_postprocessing.ScriptPostprocessing):
    name = "CodeFormer"
    order = 3000

    def ui(self):
        with ui_components.InputAccordion(False, label="CodeFormer") as enable:
            visibility = gr.Slider(minimum=0.0, maximum=1.0, step=0.001, label="Visibility", value=1.0)
            weight = gr.Slider(minimum=0.0, maximum=1.0, step=0.001, label="Weight", value=0)
        return {"enable": enable, "codeformer_visibility": visibility, "codeformer_weight": weight}

    def process(self, pp, enable, codeformer_visibility, codeformer_weight):
        calls.append((enable, codeformer_visibility, codeformer_weight))
        if codeformer_visibility == 0 or not enable:
            return
        codeformer_model.codeformer.restore(None, w=codeformer_weight)
        pp.info["CodeFormer visibility"] = round(codeformer_visibility, 3)
