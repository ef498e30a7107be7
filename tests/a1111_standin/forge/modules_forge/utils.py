"""Stand-in of Forge's modules_forge.utils: prepare_free_memory() (counts its calls)."""
calls = 0


def prepare_free_memory(aggressive=False):
    global calls
    calls += 1
