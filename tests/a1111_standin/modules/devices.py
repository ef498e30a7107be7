"""Stand-in of modules.devices: devices per task (honours --use-cpu), torch_gc()."""
import torch

from modules import shared

cpu = torch.device("cpu")
device = cpu
device_codeformer = cpu
device_gfpgan = cpu
dtype = torch.float32
gc_calls = 0


def get_optimal_device():
    return torch.device("cuda") if torch.cuda.is_available() else cpu


def get_device_for(task):
    if task in shared.cmd_opts.use_cpu or "all" in shared.cmd_opts.use_cpu:
        return cpu
    return get_optimal_device()


def torch_gc():
    global gc_calls
    gc_calls += 1
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
