"""Stand-in of modules.options: OptionInfo (v1.10.1 signature), OptionHTML, options_section and Options."""
from modules.shared_cmd_options import cmd_opts


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before='', comment_after='', infotext=None, restrict_api=False,
                 category_id=None):
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.category_id = category_id
        self.refresh = refresh
        self.do_not_save = False
        self.comment_before = comment_before
        self.comment_after = comment_after
        self.infotext = infotext
        self.restrict_api = restrict_api

    def info(self, info):
        self.comment_after += f"<span class='info'>({info})</span>"
        return self

    def html(self, html):
        self.comment_after += html
        return self

    def needs_reload_ui(self):
        self.comment_after += " <span class='info'>(requires Reload UI)</span>"
        return self


class OptionHTML(OptionInfo):
    def __init__(self, text):
        import gradio as gr

        super().__init__(str(text).strip(), label='',
                         component=lambda **kw: gr.HTML(elem_classes="settings-info", **kw))
        self.do_not_save = True


def options_section(section_identifier, options_dict):
    for info in options_dict.values():
        info.section = tuple(section_identifier[:2])
        if len(section_identifier) == 3:
            info.category_id = section_identifier[2]
    return options_dict


_builtin = {"data_labels", "data", "restricted_opts", "typemap"}


class Options:
    typemap = {int: float}

    def __init__(self, data_labels, restricted_opts=None):
        self.data_labels = data_labels
        self.data = {k: v.default for k, v in data_labels.items() if not v.do_not_save}
        self.restricted_opts = restricted_opts or set()

    def __setattr__(self, key, value):
        if key in _builtin:
            return super().__setattr__(key, value)
        if self.data is not None and (key in self.data or key in self.data_labels):
            assert not cmd_opts.freeze_settings, "changing settings is disabled"
            info = self.data_labels.get(key)
            if info is not None and info.do_not_save:
                return None
            self.data[key] = value
            return None
        return super().__setattr__(key, value)

    def __getattr__(self, item):
        if item in _builtin:
            return super().__getattribute__(item)
        if self.data is not None and item in self.data:
            return self.data[item]
        if item in self.data_labels:
            return self.data_labels[item].default
        return super().__getattribute__(item)

    def set(self, key, value, is_api=False, run_callbacks=True):
        """Like A1111: an unknown key raises KeyError; returns whether the value changed."""
        old = self.data.get(key, None)
        if old == value:
            return False
        option = self.data_labels[key]
        if option.do_not_save or (is_api and option.restrict_api):
            return False
        setattr(self, key, value)
        if run_callbacks and option.onchange is not None:
            option.onchange()
        return True

    def get_default(self, key):
        info = self.data_labels.get(key)
        return None if info is None else info.default

    def same_type(self, x, y):
        if x is None or y is None:
            return True
        return self.typemap.get(type(x), type(x)) == self.typemap.get(type(y), type(y))

    def add_option(self, key, info):
        self.data_labels[key] = info
        if key not in self.data and not info.do_not_save:
            self.data[key] = info.default
