"""settings.GENERATION_TABLE is the one definition of the generation settings: validation,
the page's controls, the clamp of stored conversations, their cleaning, and the defaults of
/chat and /v1 must all agree with it."""

from __future__ import annotations

import inspect

import pytest

from phi3ui import conversations
from phi3ui.openai_api import OPENAI_TEMPERATURE
from phi3ui.settings import (
    GENERATION_TABLE,
    SETTING,
    GenerationSettings,
    Limits,
    SettingsError,
)
from phi3ui.ui import Page
from tests.test_conversations import Backend

LIMITS = Limits(max_new_tokens=300)
BOUNDED = [s for s in GENERATION_TABLE if s.low is not None]


def only(name: str, value) -> GenerationSettings:
    """Settings valid under LIMITS but for `name`."""
    return GenerationSettings(**{"max_new_tokens": 1, name: value})


@pytest.fixture(scope="module")
def page() -> Page:
    backend = Backend([])
    backend.limits = LIMITS
    built = Page(backend)
    built.build()
    return built


@pytest.mark.parametrize("setting", [s for s in BOUNDED if s.step is not None], ids=lambda s: s.name)
def test_slider_bounds_are_the_validation_bounds(page: Page, setting) -> None:
    slider = page.ui.settings[setting.name]
    low, high = setting.bounds(LIMITS)
    assert (slider.maximum, slider.step, slider.label) == (high, setting.step, setting.label)
    # an open lower bound (top-p 0 is refused): the slider starts one step above it
    assert slider.minimum == (low + setting.step if setting.low_open else low)
    for value in (slider.minimum, slider.maximum):
        only(setting.name, setting.type(value)).validate(LIMITS)
    with pytest.raises(SettingsError):
        only(setting.name, setting.type(high + setting.step)).validate(LIMITS)
    with pytest.raises(SettingsError):
        only(setting.name, setting.type(low if setting.low_open else low - setting.step)).validate(LIMITS)


@pytest.mark.parametrize("setting", BOUNDED, ids=lambda s: s.name)
def test_stored_values_are_clamped_to_the_validation_bounds(page: Page, setting) -> None:
    low, high = setting.bounds(LIMITS)
    index = conversations.SETTINGS.index(setting.name)
    for far, edge in ((high * 10 + 10, high), (low - 10, low)):
        shown = page.setting_updates({setting.name: setting.type(far)})[index]
        if setting.name == "seed":
            assert shown == -1, "a seed out of range becomes random"
            continue
        assert shown == (edge if not setting.low_open or edge == high else low + setting.step)
        only(setting.name, shown).validate(LIMITS)


def test_the_table_is_the_order_of_stored_settings_and_page_controls(page: Page) -> None:
    assert conversations.SETTINGS == tuple(s.name for s in GENERATION_TABLE) == tuple(page.ui.settings)
    assert list(inspect.signature(Page.settings).parameters) == list(conversations.SETTINGS)


def test_stored_settings_are_cleaned_to_the_table_types() -> None:
    stored = {"max_new_tokens": 12.0, "temperature": 1, "top_k": 3.0, "seed": None, "answer_json": True,
              "json_schema": "{}", "system_prompt": 5, "top_p": "0.5", "unknown": 1}
    cleaned = conversations.clean({"id": "c1", "messages": [], "settings": stored})["settings"]
    assert cleaned == {"max_new_tokens": 12, "temperature": 1.0, "top_k": 3, "seed": None, "answer_json": True,
                       "json_schema": "{}"}
    assert all(isinstance(cleaned[name], SETTING[name].type) for name in cleaned if cleaned[name] is not None)


def test_defaults_of_the_dataclass_chat_api_and_v1_come_from_the_table() -> None:
    defaults = GenerationSettings()
    chat = inspect.signature(Page.api_chat).parameters
    for setting in GENERATION_TABLE:
        if hasattr(defaults, setting.name):
            assert getattr(defaults, setting.name) == setting.default, setting.name
        if setting.name in chat:
            assert chat[setting.name].default == setting.default, setting.name
    assert OPENAI_TEMPERATURE == SETTING["temperature"].api_default
