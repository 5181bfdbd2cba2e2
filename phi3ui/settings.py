"""Settings as plain dataclasses: what to export, how to run it, how to generate.

Every value a user or an API client can set is validated here, in one place, so the
command line, the page and the API refuse the same things with the same words.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from .json_answers import schema_problem

DEFAULT_MODEL = "microsoft/Phi-3-mini-4k-instruct"
BUNDLED = "bundled"
# Ready-made int4 OpenVINO exports the OpenVINO organisation publishes on the hub (`--ready-made`):
# a download instead of an export, with the settings its exporter recorded.
READY_MADE = {
    DEFAULT_MODEL: "OpenVINO/Phi-3-mini-4k-instruct-int4-ov",
    "microsoft/Phi-3-mini-128k-instruct": "OpenVINO/Phi-3-mini-128k-instruct-int4-ov",
    "microsoft/Phi-3.5-mini-instruct": "OpenVINO/Phi-3.5-mini-instruct-int4-ov",
}
WEIGHT_FORMATS = ("int4", "int8", "fp16")


@dataclass(frozen=True)
class EngineKind:
    """An engine by name and what it can do, so callers ask the kind instead of testing
    names or classes. The classes are looked up by name in `phi3ui.engines` (settings
    imports no engine)."""

    name: str
    summary: str  # one line for the page's engine choice
    batches: bool = False  # answers `--concurrency` messages at once; otherwise they wait their turn
    prompt_lookup: bool = False  # can check guessed tokens and take back the wrong ones
    remote: bool = False  # no model here: an OpenAI-compatible server answers (phi3ui/remote_engine.py)
    json_answers: bool = False  # can hold an answer to a JSON schema (constrained decoding, or the remote's)


# The one registry of engines, in the order they are offered.
ENGINES: dict[str, EngineKind] = {kind.name: kind for kind in (
    EngineKind("genai", "openvino-genai, answers batched with --concurrency", batches=True, prompt_lookup=True,
               json_answers=True),
    EngineKind("optimum", "optimum-intel's OVModelForCausalLM, one answer at a time"),
    # batches: answers --concurrency requests at once (the remote server does the batching)
    EngineKind("openai", "a remote OpenAI-compatible server answers, no model here", batches=True, remote=True,
               json_answers=True),
)}
LOCAL_ENGINES = tuple(name for name, kind in ENGINES.items() if not kind.remote)
REMOTE_ENGINE = next(name for name, kind in ENGINES.items() if kind.remote)
DEFAULT_ENGINE = "genai"

WeightFormat = Literal["int4", "int8", "fp16"]


class SettingsError(ValueError):
    """A setting that cannot work; the message is meant for the user as is."""


def cache_root() -> Path:
    """Where exports live; `PHI3UI_HOME` moves it (tests and Spaces use that)."""
    home = os.environ.get("PHI3UI_HOME")
    return Path(home) if home else Path.home() / ".cache" / "phi3ui"


@dataclass(frozen=True)
class ExportSettings:
    """The optimum-cli export options; the defaults are `--task text-generation-with-past
    --weight-format int4 --group-size 128 --ratio 0.6 --sym`."""

    weight_format: WeightFormat = "int4"
    group_size: int = 128
    ratio: float = 0.6
    sym: bool = True
    all_layers: bool = False  # int4 for the embeddings and the output layer too (NNCF keeps them int8)
    task: str = "text-generation-with-past"
    trust_remote_code: bool = False

    def validate(self) -> ExportSettings:
        if self.weight_format not in WEIGHT_FORMATS:
            raise SettingsError(
                f"Weight format {self.weight_format!r} is not one of {', '.join(WEIGHT_FORMATS)}."
            )
        if self.weight_format == "int4":
            if not 0.0 <= self.ratio <= 1.0:
                raise SettingsError(
                    f"Ratio {self.ratio:g} is outside 0..1: it is the share of layers "
                    "compressed to int4 (the rest stay int8)."
                )
            if self.group_size != -1 and self.group_size < 1:
                raise SettingsError(
                    f"Group size {self.group_size} is impossible: use a positive number "
                    "that divides the model's layer widths, or -1 for one group per channel."
                )
        if self.all_layers and self.weight_format != "int4":
            raise SettingsError(
                f"All layers applies to int4 only: {self.weight_format} already treats every layer alike."
            )
        if self.task not in ("text-generation-with-past", "text-generation"):
            raise SettingsError(f"Task {self.task!r} is not a text-generation task.")
        return self

    def slug(self) -> str:
        """A folder name that differs whenever the exported weights would."""
        parts = [self.weight_format]
        if self.weight_format == "int4":
            group = "cw" if self.group_size == -1 else f"g{self.group_size}"
            parts += ["sym" if self.sym else "asym", group, f"r{self.ratio:g}"]
            if self.all_layers:
                parts.append("all")
        elif self.weight_format == "int8":
            parts.append("sym" if self.sym else "asym")
        else:  # fp16 exports now keep their rotary constants exact (rope.keep_rotary_exact): not the old ones
            parts.append("exact-rotary")
        if self.task != "text-generation-with-past":
            parts.append("nopast")
        return "-".join(parts)

    def cli_args(self) -> list[str]:
        """The same settings as `optimum-cli export openvino` arguments."""
        args = ["--task", self.task, "--weight-format", self.weight_format]
        if self.weight_format == "int4":
            args += ["--group-size", str(self.group_size), "--ratio", f"{self.ratio:g}"]
            if self.all_layers:
                args.append("--all-layers")
        if self.sym and self.weight_format != "fp16":
            args.append("--sym")
        if self.trust_remote_code:
            args.append("--trust-remote-code")
        return args

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# SmolLM2's 576-wide layers do not take group size 128 (NNCF refuses a group size that
# does not divide a layer's input channels).
BUNDLED_EXPORT = ExportSettings(group_size=64)

# Sidebar presets, from the most accurate answers to the fastest decode: "most accurate" is
# the default export, "fast decode" puts every layer in int4 with the same group size, and
# "fastest decode" drops groups for one scale per channel, asymmetric (it fits any layer
# width). What each costs and gains was measured, not guessed: bench/NOTES.md, "Export presets".
DEFAULT_EXPORT = ExportSettings()
FASTEST_EXPORT = ExportSettings(group_size=-1, ratio=1.0, sym=False)
PRESETS = ("most accurate", "fast decode", "fastest decode")


def export_preset(name: str, model: str = "") -> ExportSettings:
    """A preset's settings for `model` (the bundled model's group size is 64)."""
    if name not in PRESETS:
        raise SettingsError(f"Preset {name!r} is not one of {', '.join(PRESETS)}.")
    if name == "fastest decode":
        return FASTEST_EXPORT
    base = BUNDLED_EXPORT if model.strip() == BUNDLED else DEFAULT_EXPORT
    return base if name == "most accurate" else dataclasses.replace(base, ratio=1.0)


KV_CACHE_PRECISIONS = ("", "u8", "u4")


@dataclass(frozen=True)
class RemoteSettings:
    """The OpenAI-compatible server that answers for `--engine openai`."""

    api_base: str  # up to and with the version: http://host:8000/v3 (OVMS), http://host:7860/v1 (phi3ui)
    api_key: str | None = None  # the remote's bearer key (--remote-api-key), not this server's --api-key
    model: str = ""  # the remote's model name; "" = the only one it serves
    timeout_s: float = 60.0  # longest wait for the remote's next byte: its queue and prefill count
    connect_timeout_s: float = 5.0

    def validate(self) -> RemoteSettings:
        base = self.api_base.strip()
        if not base.startswith(("http://", "https://")):
            raise SettingsError(f"--api-base must be an http:// or https:// URL such as http://127.0.0.1:8000/v3, "
                                f"not {self.api_base!r}.")
        if "@" in urlsplit(base).netloc:  # user:pass@ would show in the log and the page's model line
            raise SettingsError("--api-base must not hold a user name or password (user:pass@); give the remote's "
                                "key with --remote-api-key or PHI3UI_REMOTE_API_KEY.")
        if not self.timeout_s > 0:
            raise SettingsError(f"--remote-timeout must be above 0 seconds, not {self.timeout_s:g}.")
        return self

    @property
    def base(self) -> str:
        return self.api_base.strip().rstrip("/")


@dataclass(frozen=True)
class RuntimeSettings:
    """Which engine runs the model, where, and with which OpenVINO properties."""

    engine: str = DEFAULT_ENGINE
    device: str = "CPU"
    properties: dict = field(default_factory=dict)
    # Guess the next tokens from n-grams already in the conversation and check several in
    # one step: an answer that repeats the prompt (editing, quoting, code) comes out several
    # times faster, others at about the same speed (README, "Prompt lookup").
    prompt_lookup: bool = False
    # The KV cache's numbers: "" is OpenVINO's choice (8 bits on a CPU); "u4" halves the
    # cache's memory at a measured cost in answers (README, "Memory").
    kv_cache_precision: str = ""
    remote: RemoteSettings | None = None  # with engine "openai" only

    @property
    def kind(self) -> EngineKind:
        if self.engine not in ENGINES:
            raise SettingsError(f"Engine {self.engine!r} is not one of {', '.join(ENGINES)}.")
        return ENGINES[self.engine]

    @property
    def is_remote(self) -> bool:
        return self.kind.remote

    def validate(self) -> RuntimeSettings:
        if self.kv_cache_precision not in KV_CACHE_PRECISIONS:
            raise SettingsError(f"KV cache precision {self.kv_cache_precision!r} is not one of "
                                f"{', '.join(p for p in KV_CACHE_PRECISIONS if p)}.")
        if self.kv_cache_precision and self.engine != "genai":
            raise SettingsError(f"--kv-cache-precision needs the genai engine; the {self.engine} engine keeps "
                                "its KV cache as it is.")
        if self.is_remote:
            if self.remote is None:
                raise SettingsError("The openai engine needs the remote server's URL: --api-base.")
            self.remote.validate()
            if self.prompt_lookup:
                raise SettingsError("Prompt lookup runs in a local engine; the remote server decodes by itself.")
            return self
        if self.remote is not None:
            raise SettingsError(f"--api-base applies to --engine {REMOTE_ENGINE} only, not {self.engine}.")
        if self.prompt_lookup and not self.kind.prompt_lookup:
            able = " or ".join(name for name, kind in ENGINES.items() if kind.prompt_lookup)
            raise SettingsError(f"Prompt lookup needs the {able} engine: the {self.engine} engine's model keeps "
                                "its KV cache inside and cannot take back guessed tokens that were wrong.")
        return self


@dataclass(frozen=True)
class Limits:
    """Server-side bounds that hold whatever a client sends."""

    max_message_chars: int = 16_000
    # Older messages beyond these are left out like exchanges that do not fit the window
    # (they would not fit it anyway); they bound the work one request can ask for.
    max_history_messages: int = 200
    max_history_chars: int = 1_000_000
    max_new_tokens: int = 4096
    # A context window below the model's own (`--context-window`); None: the model's.
    context_window: int | None = None
    # When the window overflows, the oldest exchanges go until at most this share of it is
    # used, and that cut stays until it overflows again (phi3ui/window.py); 1.0 leaves out
    # the fewest each turn, which makes every turn after the first overflow re-read the window.
    window_cut_to: float = 0.5

    MIN_CONTEXT_WINDOW: ClassVar[int] = 256

    def window(self, model_window: int) -> int:
        """The window prompts are fitted to: the model's, or the cap when it is smaller."""
        return min(model_window, self.context_window) if self.context_window else model_window

    def check_window(self, model_window: int) -> None:
        """Refuse a cap the model cannot have or that leaves too little room."""
        if self.context_window is None:
            return
        if self.context_window < self.MIN_CONTEXT_WINDOW:
            raise SettingsError(f"The context window must be at least {self.MIN_CONTEXT_WINDOW} tokens, "
                                f"not {self.context_window}.")
        if self.context_window > model_window:
            raise SettingsError(f"The context window cap {self.context_window} is larger than the model's own "
                                f"{model_window} tokens; use at most {model_window}.")


@dataclass(frozen=True)
class Setting:
    """One generation setting as the page, the stored conversations, /chat and /v1 know it.

    `low`..`high` are the bounds validation, the page's slider and the stored-record clamp
    share; `high` may name a `Limits` field (the host's cap). `low_open`: `low` itself is
    refused (top-p 0), so the slider starts one `step` above it. `api_default`: what /v1 uses
    when a request does not say, where OpenAI's own default differs from the page's."""

    name: str
    type: type
    default: Any
    label: str
    help: str = ""
    low: float | None = None
    high: float | str | None = None
    step: float | None = None
    low_open: bool = False
    api_default: Any = None
    elem_id: str | None = None

    def bounds(self, limits: Limits | None = None) -> tuple[float, float]:
        high = getattr(limits or Limits(), self.high) if isinstance(self.high, str) else self.high
        return self.low, high

    def slider_bounds(self, limits: Limits | None = None) -> tuple[float, float]:
        """The page's slider range: the bounds, one step in from an open lower bound."""
        low, high = self.bounds(limits)
        return (round(low + self.step, 10) if self.low_open else low), high

    def clamp(self, value: float, limits: Limits | None = None) -> float:
        """A stored value held to what the slider can show."""
        low, high = self.slider_bounds(limits)
        return self.type(min(max(value, low), high))

    def check(self, value: Any, limits: Limits) -> str | None:
        """Why `value` is refused, in the page's and the APIs' words; None when it is fine."""
        if self.low is None or value is None:
            return None
        low, high = self.bounds(limits)
        ok = (low < value if self.low_open else low <= value) and value <= high
        if ok:
            return None
        name = self.label.split(" (")[0]
        if self.low_open:
            return f"{name} must be above {low:g} and at most {high:g}, not {value}."
        if self.name == "seed":
            return f"{name} must be between 0 and 2**32 - 1, not {value}."
        off = " (off)" if self.name == "top_k" else ""
        return f"{name} must be between {low:g}{off} and {high:g}, not {value}."


# The page's generation settings, in the order the sidebar shows them and a conversation keeps
# them. Validation, the sliders, the clamp of stored conversations, their cleaning, and the
# defaults of /chat and /v1 are all derived from this table (tests/test_settings_table.py).
GENERATION_TABLE: tuple[Setting, ...] = (
    Setting("max_new_tokens", int, 1024, "Max new tokens", "the longest answer, in tokens", low=1,
            high="max_new_tokens", step=1, elem_id="max-new-tokens"),
    Setting("temperature", float, 0.0, "Temperature (0 = greedy)", "0 always picks the likeliest token",
            low=0.0, high=2.0, step=0.05, api_default=1.0, elem_id="temperature"),
    Setting("top_p", float, 1.0, "Top-p", "sample from the likeliest tokens that make up this share",
            low=0.0, high=1.0, step=0.05, low_open=True),
    Setting("top_k", int, 50, "Top-k (0 = off)", "sample from this many likeliest tokens", low=0, high=1000,
            step=1, api_default=0),
    Setting("repetition_penalty", float, 1.0, "Repetition penalty", "above 1 makes repeating less likely",
            low=0.5, high=2.0, step=0.05),
    Setting("seed", int, None, "Seed (-1 = random)", "the same seed and settings give the same answer",
            low=0, high=2**32 - 1, elem_id="seed"),
    Setting("system_prompt", str, "", "System prompt", "what the model is told before the chat",
            elem_id="system-prompt"),
    Setting("answer_json", bool, False, "Answer as JSON",
            "The answer is JSON that fits the schema below (genai engine or a remote server)",
            elem_id="answer-json"),
    Setting("json_schema", str, "", "JSON schema (empty: any JSON object)",
            "a JSON Schema the answer must fit", elem_id="json-schema"),
)
SETTING: dict[str, Setting] = {s.name: s for s in GENERATION_TABLE}
PAGE_SETTINGS = tuple(SETTING)  # the names, in the table's order


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling settings; temperature 0 means greedy decoding. Defaults and bounds come from
    GENERATION_TABLE."""

    max_new_tokens: int = SETTING["max_new_tokens"].default
    min_new_tokens: int = 0  # benchmark only: forces a fixed answer length; the page never sets it
    temperature: float = SETTING["temperature"].default
    top_p: float = SETTING["top_p"].default
    top_k: int = SETTING["top_k"].default
    repetition_penalty: float = SETTING["repetition_penalty"].default
    seed: int | None = SETTING["seed"].default
    system_prompt: str = SETTING["system_prompt"].default
    # The answer ends before the first of these strings (which it leaves out); the API's `stop`.
    stop: tuple[str, ...] = ()
    # A JSON Schema the answer must fit (phi3ui/json_answers.py); "" for free text.
    json_schema: str = SETTING["json_schema"].default

    MAX_STOP_STRINGS: ClassVar[int] = 4  # as many as OpenAI's API takes
    MAX_STOP_CHARS: ClassVar[int] = 200  # the engines match each one on every new token

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def validate(self, limits: Limits = Limits()) -> GenerationSettings:
        """Refuse out-of-range values instead of clamping them in silence."""
        for setting in GENERATION_TABLE:
            if hasattr(self, setting.name) and (problem := setting.check(getattr(self, setting.name), limits)):
                raise SettingsError(problem)
        checks = [
            (0 <= self.min_new_tokens <= self.max_new_tokens,
             f"Min new tokens must be between 0 and max new tokens, not {self.min_new_tokens}."),
            (len(self.system_prompt) <= limits.max_message_chars,
             f"The system prompt is {len(self.system_prompt)} characters; the limit is "
             f"{limits.max_message_chars}."),
            (len(self.stop) <= self.MAX_STOP_STRINGS,
             f"At most {self.MAX_STOP_STRINGS} stop strings, not {len(self.stop)}."),
            (all(isinstance(s, str) and 0 < len(s) <= self.MAX_STOP_CHARS for s in self.stop),
             f"Each stop string must be text of 1 to {self.MAX_STOP_CHARS} characters."),
        ]
        for ok, message in checks:
            if not ok:
                raise SettingsError(message)
        if self.json_schema:
            if problem := schema_problem(self.json_schema):
                raise SettingsError(problem)
            if self.min_new_tokens:
                raise SettingsError("Min new tokens must be 0 for an answer as JSON: it ends where the JSON does.")
        return self

    @classmethod
    def from_values(cls, **values) -> GenerationSettings:
        """Build from loosely typed input (page, API), with a clear error on bad types."""
        converted = {}
        for f in dataclasses.fields(cls):
            if f.name not in values or values[f.name] is None:
                continue
            value = values[f.name]
            if f.name == "stop":
                converted["stop"] = stop_strings(value)
                continue
            converted[f.name] = typed(f.name, SETTING[f.name].type if f.name in SETTING else int, value)
        return cls(**converted)


def typed(name: str, kind: type, value: Any) -> Any:
    """`value` as a setting of type `kind`, from loosely typed input (page, API, a presets
    file); a clear error for a value of another kind (a bool is not a number, "1" is not one)."""
    try:
        if kind is bool:
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        if isinstance(value, bool) or (kind is not str and isinstance(value, str)):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError, OverflowError):
        described = {int: "a whole number", float: "a number", str: "text", bool: "true or false"}[kind]
        raise SettingsError(f"{name} must be {described}, not {value!r}.") from None


def stored_values(value: Any) -> dict:
    """The known generation settings with values of the right kind, from a stored or loaded
    record (a conversation's, a preset's); anything else is left out, not refused: the page
    then keeps what its controls have."""
    if not isinstance(value, dict):
        return {}
    kept: dict[str, Any] = {}
    for name in PAGE_SETTINGS:
        v, kind = value.get(name), SETTING[name].type
        if kind in (str, bool):
            if isinstance(v, kind):
                kept[name] = v
        elif name == "seed" and v is None:
            kept[name] = None
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            kept[name] = kind(v)
    return kept


def stop_strings(value: object) -> tuple[str, ...]:
    """Stop strings as a tuple: one string or a list of them (OpenAI's `stop` takes both)."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise SettingsError(f"stop must be text or a list of texts, not {value!r}.")
