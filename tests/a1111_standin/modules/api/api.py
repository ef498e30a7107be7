"""Stand-in of modules.api.api: the routes a face-restorer extension interacts with, and A1111's error shape.

With ``--api`` A1111 answers every failure as JSON ``{"error", "detail", "body", "errors"}`` with the
exception's ``status_code`` (500 otherwise); the stand-in does the same.
"""
from __future__ import annotations

import base64
import io
import json

from fastapi import Body, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse
from PIL import Image

from modules import postprocessing, processing, scripts, shared
from modules.api import models


def decode_base64_to_image(encoding: str) -> Image.Image:
    if encoding.startswith("data:image/"):
        encoding = encoding.split(";")[1].split(",")[1]
    try:
        return Image.open(io.BytesIO(base64.b64decode(encoding)))
    except Exception as e:
        raise HTTPException(status_code=500, detail="Invalid encoded image") from e


def encode_pil_to_base64(image: Image.Image) -> str:
    with io.BytesIO() as out:
        image.save(out, format="PNG")
        return base64.b64encode(out.getvalue()).decode()


def api_middleware(app: FastAPI) -> None:
    def handle_exception(request: Request, e: Exception):
        err = {"error": type(e).__name__, "detail": vars(e).get('detail', ''), "body": vars(e).get('body', ''),
               "errors": str(e)}
        return JSONResponse(status_code=vars(e).get('status_code', 500), content=jsonable_encoder(err))

    @app.middleware("http")
    async def exception_handling(request: Request, call_next):
        try:
            return await call_next(request)
        except Exception as e:
            return handle_exception(request, e)

    @app.exception_handler(Exception)
    async def fastapi_exception_handler(request: Request, e: Exception):
        return handle_exception(request, e)

    @app.exception_handler(HTTPException)
    async def http_exception_handler(request: Request, e: HTTPException):
        return handle_exception(request, e)


class Api:
    def __init__(self, app: FastAPI, queue_lock, create_ui=None):
        self.app = app
        self.queue_lock = queue_lock
        # GET /sdapi/v1/options answers through models.OptionsModel, built when modules.api.models was first
        # imported: options added later are left out of the answer (see modules/api/models.py).
        api_middleware(app)
        app.add_api_route("/sdapi/v1/face-restorers", self.get_face_restorers, methods=["GET"])
        app.add_api_route("/sdapi/v1/options", self.get_config, methods=["GET"], response_model=models.OptionsModel)
        app.add_api_route("/sdapi/v1/options", self.set_config, methods=["POST"])
        app.add_api_route("/sdapi/v1/extra-single-image", self.extras_single_image_api, methods=["POST"])
        app.add_api_route("/sdapi/v1/txt2img", self.text2imgapi, methods=["POST"])
        if not scripts.scripts_txt2img.scripts and create_ui is not None:     # --nowebui: the UI is built here
            create_ui()

    def get_face_restorers(self):
        return [{"name": x.name(), "cmd_dir": getattr(x, "cmd_dir", None)} for x in shared.face_restorers]

    def get_config(self):
        options = {}
        for key in shared.opts.data.keys():
            metadata = shared.opts.data_labels.get(key)
            options[key] = shared.opts.data.get(key, metadata.default if metadata is not None else None)
        return options

    def set_config(self, req: dict = Body(...)):
        for k, v in req.items():
            shared.opts.set(k, v, is_api=True)
        return None

    def extras_single_image_api(self, req: dict = Body(...)):
        image = decode_base64_to_image(req["image"])
        with self.queue_lock:
            result = postprocessing.run_extras(
                extras_mode=0, resize_mode=0, image=image, image_folder="", input_dir="", output_dir="",
                show_extras_results=True, gfpgan_visibility=req.get("gfpgan_visibility", 0),
                codeformer_visibility=req.get("codeformer_visibility", 0),
                codeformer_weight=req.get("codeformer_weight", 0), upscaling_resize=1, upscaling_resize_w=512,
                upscaling_resize_h=512, upscaling_crop=True, extras_upscaler_1="None", extras_upscaler_2="None",
                extras_upscaler_2_visibility=0, upscale_first=False, save_output=False)
        return {"html_info": result[1], "image": encode_pil_to_base64(result[0][0])}

    def text2imgapi(self, req: dict = Body(...)):
        runner = scripts.scripts_txt2img
        p = processing.StableDiffusionProcessingTxt2Img(
            prompt=req.get("prompt", ""), seed=req.get("seed", -1), restore_faces=req.get("restore_faces"),
            override_settings=req.get("override_settings"),
            override_settings_restore_afterwards=req.get("override_settings_restore_afterwards", True))
        p.scripts = runner
        p.script_args = [None] + [getattr(c, "value", None) for c in runner.inputs[1:]]
        with self.queue_lock:
            shared.state.begin(job="scripts_txt2img")
            try:
                processed = processing.process_images(p)
            finally:
                shared.state.end()
        return {"images": [encode_pil_to_base64(im) for im in processed.images],
                "info": json.dumps({"infotexts": processed.infotexts})}
