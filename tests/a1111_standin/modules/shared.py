"""Stand-in of modules.shared: the restorer registry, options, state and re-exported helpers."""
from modules import options, shared_cmd_options
from modules.paths_internal import data_path, models_path, script_path  # noqa: F401

cmd_opts = shared_cmd_options.cmd_opts
face_restorers = []
options_templates: dict = None
opts: options.Options = None
state = None
demo = None
config_filename = None

OptionInfo = options.OptionInfo
OptionHTML = options.OptionHTML
options_section = options.options_section
