"""Stand-in of modules.shared_options: the built-in settings the adapter interacts with."""
import gradio as gr

from modules import shared
from modules.options import OptionInfo, options_section

options_templates = {}

options_templates.update(options_section(('saving-images', "Saving images/grids", "saving"), {
    "samples_format": OptionInfo('png', 'File format for images'),
    "enable_pnginfo": OptionInfo(True, "Save text information about generation parameters as chunks to png files"),
}))

options_templates.update(options_section(('postprocessing', "Postprocessing", "postprocessing"), {
    "postprocessing_enable_in_main_ui": OptionInfo([], "Enable postprocessing operations in txt2img and img2img tabs",
                                                   gr.Dropdown),
    "postprocessing_disable_in_extras": OptionInfo([], "Disable postprocessing operations in extras tab", gr.Dropdown),
    "postprocessing_operation_order": OptionInfo([], "Postprocessing operation order", gr.Dropdown),
}))

options_templates.update(options_section(('face-restoration', "Face restoration", "postprocessing"), {
    "face_restoration": OptionInfo(False, "Restore faces", infotext='Face restoration'),
    "face_restoration_model": OptionInfo("CodeFormer", "Face restoration model", gr.Radio,
                                         lambda: {"choices": [x.name() for x in shared.face_restorers]}),
    "code_former_weight": OptionInfo(0.5, "CodeFormer weight", gr.Slider, {"minimum": 0, "maximum": 1, "step": 0.01}),
    "face_restoration_unload": OptionInfo(False, "Move face restoration model from VRAM into RAM after processing"),
}))
