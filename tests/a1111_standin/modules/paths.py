"""Stand-in of modules.paths: re-exports the folders of paths_internal (copied at import, as in A1111)."""
from modules.paths_internal import (data_path, extensions_builtin_dir, extensions_dir, models_path,  # noqa: F401
                                    script_path)
