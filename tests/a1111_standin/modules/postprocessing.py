"""Stand-in of modules.postprocessing: the Extras tab run (single image) and the old API entry run_extras."""
from __future__ import annotations

from modules import devices, scripts, scripts_postprocessing, shared


def run_postprocessing(extras_mode, image, image_folder, input_dir, output_dir, show_extras_results, *args,
                       save_output: bool = True):
    """Single-image mode only. Returns (images, infotext, '') where infotext is the "postprocessing" text."""
    assert extras_mode == 0, "stand-in: only the single-image mode"
    devices.torch_gc()
    shared.state.begin(job="extras")
    assert image, 'image not selected'
    image = image if image.mode in ("RGBA", "RGB") else image.convert("RGB")
    pp = scripts_postprocessing.PostprocessedImage(image)
    scripts.scripts_postproc.run(pp, args)
    infotext = ", ".join(k if k == v else f"{k}: {v}" for k, v in pp.info.items() if v is not None)
    pp.image.info["postprocessing"] = infotext
    devices.torch_gc()
    shared.state.end()
    return [pp.image], infotext, ''


def run_extras(extras_mode, resize_mode, image, image_folder, input_dir, output_dir, show_extras_results,
               gfpgan_visibility, codeformer_visibility, codeformer_weight, upscaling_resize, upscaling_resize_w,
               upscaling_resize_h, upscaling_crop, extras_upscaler_1, extras_upscaler_2,
               extras_upscaler_2_visibility, upscale_first: bool, save_output: bool = True, max_side_length: int = 0):
    """The API's handler: only the built-in scripts get arguments; every other script gets None for each control."""
    args = scripts.scripts_postproc.create_args_for_run({
        "CodeFormer": {"enable": True, "codeformer_visibility": codeformer_visibility,
                       "codeformer_weight": codeformer_weight},
    })
    return run_postprocessing(extras_mode, image, image_folder, input_dir, output_dir, show_extras_results, *args,
                              save_output=save_output)
