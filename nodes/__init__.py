"""ComfyUI nodes (thin adapters over vspbfr_core).  Filled in by the ComfyUI node-pack work."""
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
