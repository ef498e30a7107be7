"""Benchmark: the cost of identity features, best-of-N (N = 1, 2, 4) and the identity scoring itself.

Workload: whole photos from ../shared/faces/whole through :class:`vspbfr_core.VSPBFRPipeline` with the
full-size networks (weights regenerated from the parity manifest: the released files' shapes and FLOPs), the real
RetinaFace mobilenet0.25 and an identity embedder:

* ``arcface``: facexlib's IR-SE-50 ArcFace at full size with random weights (the real file cannot be downloaded
  here; the cost does not depend on the values);
* ``dlib``: dlib's real 128-D descriptor (``pip install "vspbfr[dlib]"``), when installed.

Rows (seconds per face, median of ``--repeats`` after one warm-up):

* ``plain``: no embedder (today's restoration);
* ``N=1``: the embedder on, one candidate (scores only: the input crop and the restored face are embedded);
* ``N=2``, ``N=4``: best-of-N;
* ``embed``: one ``embed_crops`` call per face on its own (the scoring cost per embedded face).

Usage::

    python benchmarks/bench_identity.py [--image cf_02.png] [--candidates 1 2 4] [--embedders arcface dlib]
                                        [--repeats 1] [--device cpu] [--threads N] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vspbfr_core.face import load_detector  # noqa: E402
from vspbfr_core.model import VSPBFRModel  # noqa: E402
from vspbfr_core.parity import load_manifest_networks  # noqa: E402
from vspbfr_core.pipeline import VSPBFRPipeline  # noqa: E402

SHARED = Path(os.environ.get("VSPBFR_SHARED", ROOT.parent / "shared"))


def load_image(name: str) -> torch.Tensor:
    from PIL import Image

    with Image.open(SHARED / "faces" / "whole" / name) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)[None]


def full_pipeline(manifest_path: Path, device: str) -> VSPBFRPipeline:
    manifest = json.loads(manifest_path.read_text())
    nets = load_manifest_networks(manifest, ("e4e", "code_diffuser", "restoration"), str(manifest_path))
    model = VSPBFRModel(nets["e4e"].networks["style_encoder"], nets["e4e"].networks["stylegan"],
                        nets["code_diffuser"].networks["code_diffuser"], nets["restoration"].networks["restoration_net"])
    detector = load_detector("retinaface_mobile0.25", [SHARED / "weights"])
    return VSPBFRPipeline(model, detector).to(device, torch.float32)


def embedder(name: str, device: str):
    if name == "arcface":
        from vspbfr_core.identity import ArcFaceEmbedder, ArcFaceIRSE

        net = ArcFaceIRSE()                  # IR-SE-50, 512-D: the released file's layout
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        return ArcFaceEmbedder(net.eval(), device)
    from vspbfr_core.identity import load_embedder

    return load_embedder(name, device=device)


def timed(fn, repeats: int) -> float:
    fn()                                      # warm-up
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--manifest", type=Path, default=SHARED / "parity" / "manifest.json")
    p.add_argument("--image", default="cf_02.png", help="a photo in ../shared/faces/whole")
    p.add_argument("--max-faces", type=int, default=2, help="faces restored per photo (largest first)")
    p.add_argument("--candidates", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--embedders", nargs="+", default=["arcface", "dlib"])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = full_pipeline(args.manifest, args.device)
    image = load_image(args.image)
    faces = min(args.max_faces or 10 ** 9, len(pipe.detect(image)))
    opts = dict(seed=0, max_faces=args.max_faces)
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {args.device}, threads {torch.get_num_threads()}, {args.image}: {faces} "
          f"face(s), load average {load:.2f}, median of {args.repeats} after a warm-up")
    results = []
    plain = timed(lambda: pipe(image, **opts), args.repeats)
    results.append({"row": "plain", "embedder": None, "s_per_face": plain / faces})
    print(f"{'row':<10}{'embedder':<10}{'s/face':>9}{'x plain':>9}")
    print(f"{'plain':<10}{'-':<10}{plain / faces:>9.2f}{1.0:>9.2f}")
    for name in args.embedders:
        try:
            emb = embedder(name, args.device)
        except ImportError as exc:
            print(f"{name}: skipped ({exc})")
            continue
        crops = pipe.align(image.permute(0, 3, 1, 2), pipe.detect(image)).crops[:faces]
        t_embed = timed(lambda: emb.embed_crops(crops), max(args.repeats, 3))
        results.append({"row": "embed", "embedder": name, "s_per_face": t_embed / faces})
        for n in args.candidates:
            t = timed(lambda: pipe(image, embedder=emb, candidates=n, **opts), args.repeats)
            results.append({"row": f"N={n}", "embedder": name, "candidates": n, "s_per_face": t / faces})
            print(f"{f'N={n}':<10}{name:<10}{t / faces:>9.2f}{t / plain:>9.2f}")
        print(f"{'embed':<10}{name:<10}{t_embed / faces:>9.3f}{t_embed / plain:>9.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"image": args.image, "faces": faces, "load_average": load,
                                               "threads": torch.get_num_threads(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
