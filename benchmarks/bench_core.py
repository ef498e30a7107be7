"""Per-stage latency and peak memory of the VSPBFR networks on aligned 512 faces.

Usage:
    python benchmarks/bench_core.py [--manifest ../shared/parity/manifest.json] [--batch 1 4] [--repeats 3]
                                    [--devices cpu cuda] [--dtypes float32 float16 bfloat16] [--threads N]

Weights are regenerated at full size from the parity manifest (same shapes and FLOPs as the
released files).  Each stage is timed as the median of ``--repeats`` runs after one warm-up run.
Peak memory: on CUDA ``max_memory_allocated`` per stage; on CPU the peak resident set size above
the level before the stage, sampled every 2 ms by a background thread (an approximation that
includes allocator caching).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vspbfr_core.model import VSPBFRModel  # noqa: E402
from vspbfr_core.parity import load_manifest_networks  # noqa: E402
from vspbfr_core.rng import make_generator  # noqa: E402

STAGES = ("encode", "diffuse", "feature_bank", "restore")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory above the starting level while the block runs."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start = rss_bytes()
            self._max = self.start
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max, rss_bytes()) - self.start


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_stages(model: VSPBFRModel, faces: torch.Tensor, seed: int, timings: dict[str, list[float]],
               peaks: dict[str, int]) -> None:
    device = faces.device
    noise = model.draw_noise_per_face([make_generator(seed, i) for i in range(faces.shape[0])])
    noise = noise.to(device, faces.dtype)
    state: dict[str, object] = {}

    def stage(name: str, fn):
        sync(device)
        with PeakMemory(device) as pm:
            t0 = time.perf_counter()
            out = fn()
            sync(device)
            timings[name].append(time.perf_counter() - t0)
        peaks[name] = max(peaks.get(name, 0), pm.peak)
        return out

    ws = stage("encode", lambda: model.encode(faces))
    # the W+ diffusion stays in fp32 (fragile: sharp softmax, LayerNorm of near-constant rows)
    prompts = stage("diffuse", lambda: model.diffuse(ws.float(), noise.x_T.float()).to(faces.dtype))
    bank = stage("feature_bank", lambda: model.feature_bank(prompts, noise.stylegan)[0])
    state["out"] = stage("restore", lambda: model.restore(faces, bank, prompts, noise))


def bench(model: VSPBFRModel, device: torch.device, dtype: torch.dtype, batch: int, repeats: int) -> dict:
    faces = (torch.rand(batch, 3, 512, 512, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device, dtype)
    timings: dict[str, list[float]] = {s: [] for s in STAGES}
    peaks: dict[str, int] = {}
    with torch.inference_mode():
        run_stages(model, faces, 0, {s: [] for s in STAGES}, {})  # warm-up
        for r in range(repeats):
            run_stages(model, faces, r, timings, peaks)
    row = {s: statistics.median(timings[s]) for s in STAGES}
    row["total"] = sum(row[s] for s in STAGES)
    return {"device": str(device), "dtype": str(dtype).replace("torch.", ""), "batch": batch, "median_s": row,
            "peak_mib": {s: peaks[s] / 2**20 for s in STAGES}}


def main() -> int:
    here = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--manifest", default=str(here.parent / "shared" / "parity" / "manifest.json"))
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    p.add_argument("--dtypes", nargs="+", default=["float32", "float16", "bfloat16"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    manifest = json.loads(Path(args.manifest).read_text())
    nets = load_manifest_networks(manifest, ("e4e", "code_diffuser", "restoration"), args.manifest)
    model = VSPBFRModel(nets["e4e"].networks["style_encoder"], nets["e4e"].networks["stylegan"],
                        nets["code_diffuser"].networks["code_diffuser"], nets["restoration"].networks["restoration_net"])
    results = []
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}, "
          f"CUDA {'yes: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}")
    for dev_name in args.devices:
        if dev_name == "cuda" and not torch.cuda.is_available():
            print("cuda: not available, skipped")
            continue
        device = torch.device(dev_name)
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            if device.type == "cpu" and dtype != torch.float32:
                continue   # half precision is a GPU path; CPU runs fp32
            model.to(device=device, dtype=dtype)
            model.code_diffuser.float()
            for batch in args.batch:
                res = bench(model, device, dtype, batch, args.repeats)
                results.append(res)
                m, pk = res["median_s"], res["peak_mib"]
                print(f"\n{res['device']} {res['dtype']} batch {batch} (median of {args.repeats})")
                print(f"{'stage':<14}{'ms':>10}{'ms/face':>10}{'peak MiB':>10}")
                for s in STAGES:
                    print(f"{s:<14}{m[s] * 1e3:>10.0f}{m[s] * 1e3 / batch:>10.0f}{pk[s]:>10.0f}")
                print(f"{'total':<14}{m['total'] * 1e3:>10.0f}{m['total'] * 1e3 / batch:>10.0f}"
                      f"{max(pk.values()):>10.0f}   faces/s {batch / m['total']:.3f}")
        model.to("cpu", torch.float32)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
