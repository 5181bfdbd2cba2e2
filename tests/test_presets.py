"""Export presets and property merging: fast, no model needed."""

from __future__ import annotations

import pytest

from phi3ui.engine import default_properties, merge_properties
from phi3ui.export import check_settings
from phi3ui.settings import (
    BUNDLED,
    BUNDLED_EXPORT,
    DEFAULT_EXPORT,
    FASTEST_EXPORT,
    PRESETS,
    ExportSettings,
    SettingsError,
    export_preset,
)
from phi3ui.ui import Page


def test_seed_preset_is_the_seed_command_and_the_bundled_models_default() -> None:
    assert export_preset("most accurate", "microsoft/Phi-3-mini-4k-instruct") == DEFAULT_EXPORT == ExportSettings()
    assert export_preset("most accurate", BUNDLED) == BUNDLED_EXPORT


PHI3_WIDTHS = {"hidden_size": 3072, "intermediate_size": 8192}
BUNDLED_WIDTHS = {"hidden_size": 576, "intermediate_size": 1536}


def test_every_preset_fits_phi3_and_the_bundled_model() -> None:
    for preset in PRESETS:
        check_settings(export_preset(preset), PHI3_WIDTHS)
        check_settings(export_preset(preset, BUNDLED), BUNDLED_WIDTHS)


def test_fast_presets_put_every_layer_in_int4() -> None:
    """"fast decode" is the seed's export with ratio 1.0, keeping each model's group size;
    "fastest decode" is channel-wise (it fits any width, so it is the same for every model)."""
    assert export_preset("fast decode") == ExportSettings(ratio=1.0)
    assert export_preset("fast decode", BUNDLED) == ExportSettings(group_size=64, ratio=1.0)
    assert export_preset("fastest decode") == export_preset("fastest decode", BUNDLED) == FASTEST_EXPORT
    assert FASTEST_EXPORT.group_size == -1 and FASTEST_EXPORT.ratio == 1.0
    assert "--sym" not in FASTEST_EXPORT.cli_args(), "asymmetric"


def test_unknown_preset_is_refused() -> None:
    with pytest.raises(SettingsError, match="Preset"):
        export_preset("fastest ever")


def test_page_fills_fields_from_a_preset_and_recognises_presets() -> None:
    fastest = export_preset("fastest decode")
    assert Page.apply_preset("fastest decode", "x") == (fastest.weight_format, fastest.group_size,
                                                        fastest.ratio, fastest.sym, fastest.all_layers)
    assert all(Page.preset_of(export_preset(p, BUNDLED), BUNDLED) == p for p in PRESETS)
    assert Page.preset_of(ExportSettings(ratio=0.8), "x") is None


def test_none_unsets_a_default_property() -> None:
    merged = merge_properties(default_properties(), {"NUM_STREAMS": None, "KV_CACHE_PRECISION": "f16"})
    assert "NUM_STREAMS" not in merged and merged["KV_CACHE_PRECISION"] == "f16"
    assert merged["PERFORMANCE_HINT"] == default_properties()["PERFORMANCE_HINT"]
