"""Stand-in of modules.sd_models: only ``model_data.lock``, held by A1111's first checkpoint load (a background
thread at start) while it replaces ``torch.nn.Module.load_state_dict`` for every thread."""
import threading


class SdModelData:
    def __init__(self):
        self.sd_model = None
        self.lock = threading.Lock()


model_data = SdModelData()
