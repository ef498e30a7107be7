"""Stand-in of modules.shared_cmd_options: the parsed command line (only the flags the tests need)."""
import argparse

cmd_opts = argparse.Namespace(
    use_cpu=["all"], lowvram=False, medvram=False, api=True, nowebui=False, no_half=True,
    freeze_settings=False, freeze_settings_in_sections=None, freeze_specific_settings=None, hide_ui_dir_config=False,
    gfpgan_models_path=None, codeformer_models_path=None,
)
