"""`loradoctor.integrations.axolotl` in-process: the error without axolotl (runs everywhere),
and, where axolotl is installed, the YAML settings the plugin declares and the callback it adds.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import pytest

MODULE = "loradoctor.integrations.axolotl"
needs_axolotl = pytest.mark.skipif(importlib.util.find_spec("axolotl") is None,
                                   reason="axolotl is not installed (make test-axolotl)")


def test_import_without_axolotl_says_what_to_install(monkeypatch):
    for name in [n for n in sys.modules if n == "axolotl" or n.startswith("axolotl.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "axolotl", None)  # None: "not importable" to import
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    with pytest.raises(ImportError) as raised:
        importlib.import_module(MODULE)
    assert "Axolotl plugin and needs axolotl (pip install axolotl)" in str(raised.value)
    assert MODULE not in sys.modules


@needs_axolotl
def test_declared_settings_resolve_for_axolotl():
    plugin_module = importlib.import_module(MODULE)
    plugin = plugin_module.LoraDoctorPlugin()
    # Axolotl imports the dotted name it is given and merges the model into its config schema.
    module_name, class_name = plugin.get_input_args().rsplit(".", 1)
    args_model = getattr(importlib.import_module(module_name), class_name)
    assert args_model is plugin_module.LoraDoctorArgs
    parsed = args_model(loradoctor_on_error="warn", loradoctor_batches=1)
    assert parsed.model_dump(exclude_none=True) == {"loradoctor_on_error": "warn",
                                                    "loradoctor_batches": 1}
    with pytest.raises(ValueError, match="loradoctor_on_error"):
        args_model(loradoctor_on_error="explode")


@needs_axolotl
def test_one_callback_from_the_yaml_settings():
    from axolotl.utils.dict import DictDefault

    from loradoctor.integrations.transformers import LoraDoctorCallback

    plugin = importlib.import_module(MODULE).LoraDoctorPlugin()
    cfg = DictDefault({"loradoctor_on_error": "warn", "loradoctor_batches": 5,
                       "loradoctor_select": ["LD1"], "loradoctor_ignore": ["LD114"],
                       "loradoctor_check_model": False})
    (callback,) = plugin.add_callbacks_pre_trainer(cfg, model=None)
    assert isinstance(callback, LoraDoctorCallback)
    assert (callback.on_error, callback.n_batches, callback.select, callback.ignore,
            callback.check_model) == ("warn", 5, ["LD1"], ["LD114"], False)
    (default,) = plugin.add_callbacks_pre_trainer(DictDefault({}), model=None)
    assert (default.on_error, default.n_batches, default.check_model) == ("raise", 2, True)
    assert plugin.add_callbacks_post_trainer(cfg, trainer=None) == []  # added once, pre-trainer
