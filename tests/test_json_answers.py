"""Answers as JSON: schemas checked before any token, answers held to them on the genai
engines (batching on the engine itself, one answer at a time through the app), refused
clearly on the optimum engine, and through /v1 with the real `openai` client, streamed and
not, and /chat."""

from __future__ import annotations

import json
from collections.abc import Iterator

import jsonschema
import openai
import pytest

from tests.app_process import AppProcess
from tests.json_cases import OBJECT_PROMPTS, PROMPTS, SCHEMAS, instruction
from phi3ui.engines import load_engine
from phi3ui.json_answers import (
    JSON_OBJECT,
    NOT_ENFORCED,
    canonical,
    response_format,
    response_format_schema,
    schema_problem,
)
from phi3ui.settings import GenerationSettings, RuntimeSettings, SettingsError

# A valid JSON Schema (Python's re reads the pattern) that XGrammar's regex parser refuses.
BAD_PATTERN = {"type": "string", "pattern": "(?=a)b"}
REFUSED = "Regex parsing error at position 3: Lookahead is not supported yet"


def fits(text: str, schema: dict) -> None:
    jsonschema.validate(json.loads(text), schema, format_checker=jsonschema.FormatChecker())


# --- schemas, without a model ------------------------------------------------------------
def test_the_shapes_clients_ask_for_are_accepted() -> None:
    for schema in SCHEMAS.values():
        assert schema_problem(canonical(schema)) is None


# A valid value of each keyword that would not be enforced.
EXAMPLES = {
    "uniqueItems": True, "multipleOf": 3, "not": {"type": "string"}, "if": {"type": "string"},
    "then": {"type": "string"}, "else": {"type": "string"}, "oneOf": [{"type": "string"}],
    "dependentRequired": {"a": ["b"]}, "dependentSchemas": {"a": {"required": ["b"]}}, "dependencies": {"a": ["b"]},
    "propertyNames": {"maxLength": 3}, "unevaluatedProperties": False, "unevaluatedItems": False,
    "$dynamicRef": "#meta", "contains": {"const": 42}, "minContains": 1, "maxContains": 2,
}


def test_every_keyword_that_would_be_ignored_has_an_example() -> None:
    assert set(EXAMPLES) == set(NOT_ENFORCED)


@pytest.mark.parametrize("keyword", sorted(NOT_ENFORCED))
def test_every_keyword_that_would_be_ignored_is_refused_by_name_and_place(keyword) -> None:
    schema = {"type": "object", "properties": {"inner": {keyword: EXAMPLES[keyword]}}}
    problem = schema_problem(json.dumps(schema))
    assert problem and f"`{keyword}` at schema.properties.inner" in problem, problem


@pytest.mark.parametrize("schema, words", [
    ({"allOf": [{"type": "object"}, {"required": ["a"]}]}, "`allOf` with 2 schemas at schema"),
    ({"$ref": "https://example.com/person.json"}, "only references inside the schema"),
    ({"type": "object", "properties": {"a": {"type": "integer", "minimum": "zero"}}},
     "not a valid JSON Schema at ['properties']['a']['minimum']"),
    ("not json", "not valid JSON"),
    ([{"type": "object"}], "must be an object"),
])
def test_a_schema_that_cannot_be_kept_says_why(schema, words) -> None:
    text = schema if isinstance(schema, str) else json.dumps(schema)
    assert words in (schema_problem(text) or "")


@pytest.mark.parametrize("schema, words", [
    ({"type": "string", "maxLength": 5000}, "`maxLength` 5000 at schema: at most 200"),
    ({"type": "object", "properties": {f"p{i}": {"type": "string", "minLength": i % 7, "maxLength": 64 - i}
                                       for i in range(20)}}, "string lengths add up to 1090 over 20 different"),
    ({"type": "string", "pattern": "^(a{1,1000}){1,1000}$"}, "repeats 1000 times: at most 50"),
    ({"type": "string", "pattern": "a" * 201}, "is 201 characters: at most 200"),
    ({"type": "string", "format": "email", "maxLength": 20}, "a formatted string's length is not held"),
])
def test_a_schema_too_costly_to_compile_or_keep_is_refused_before_the_compiler(schema, words) -> None:
    assert words in (schema_problem(json.dumps(schema)) or "")


def test_strings_that_share_a_bound_count_once() -> None:
    many = {"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 64} for i in range(20)}}
    assert schema_problem(json.dumps(many)) is None


def test_a_deeply_nested_schema_is_refused_not_a_crash() -> None:
    nested: dict = {}
    inner = nested
    for _ in range(123):
        inner["items"] = {}
        inner = inner["items"]
    assert "nests deeper than 32 levels" in schema_problem(json.dumps(nested))
    assert "nests deeper than 32 levels" in schema_problem("[" * 5000 + "]" * 5000)


def test_one_allof_and_inner_references_are_fine() -> None:
    assert schema_problem(json.dumps({"allOf": [{"$ref": "#/$defs/a"}], "$defs": {"a": {"type": "object"}}})) is None


def test_a_huge_schema_is_refused_before_it_is_read() -> None:
    assert "the limit is" in schema_problem(json.dumps({"enum": ["x" * 20_000]}))


def test_response_format_maps_to_a_schema_and_back() -> None:
    assert response_format_schema({"type": "text"}) == ("", None)
    assert response_format_schema({"type": "json_object"}) == (JSON_OBJECT, None)
    person = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMAS["person"], "strict": True}}
    schema, problem = response_format_schema(person)
    assert problem is None and json.loads(schema) == SCHEMAS["person"]
    assert list(json.loads(schema)["properties"]) == ["name", "age"], "the client's order is kept"
    assert response_format(schema) == {"type": "json_schema", "json_schema": {
        "name": "answer", "schema": SCHEMAS["person"], "strict": True}}
    assert response_format(JSON_OBJECT) == {"type": "json_object"}
    assert response_format("") is None
    assert response_format_schema({"type": "json_schema", "json_schema": {"name": "any"}}) == ("{}", None)
    assert "takes `name`" in response_format_schema(
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "format": "y"}})[1]


def test_settings_refuse_a_bad_schema_and_a_forced_length() -> None:
    with pytest.raises(SettingsError, match="'\\[a-' is not a 'regex'"):
        GenerationSettings(json_schema=json.dumps({"type": "string", "pattern": "[a-"})).validate()
    with pytest.raises(SettingsError, match="uniqueItems"):
        GenerationSettings(json_schema=json.dumps({"type": "array", "uniqueItems": True})).validate()
    with pytest.raises(SettingsError, match="Min new tokens must be 0"):
        GenerationSettings(json_schema=JSON_OBJECT, min_new_tokens=5).validate()


# --- the engines, on the bundled model ------------------------------------------------------
@pytest.fixture(scope="module")
def genai(bundled) -> Iterator:
    """The batching engine (the one-answer-at-a-time engine is tested through /v1 below)."""
    engine = load_engine(bundled.folder, RuntimeSettings(engine="genai"), concurrency=2)
    yield engine
    engine.close()


def json_answer(engine, name: str, question: str, schema_text: str, tokens: int = 300) -> tuple[str, object]:
    settings = GenerationSettings(max_new_tokens=tokens, json_schema=schema_text).validate()
    engine.check_settings(settings)
    answer = engine.answer(engine.render([{"role": "system", "content": instruction(name)},
                                          {"role": "user", "content": question}]), settings)
    return "".join(answer), answer.stats


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_answer_parses_and_fits_its_schema(genai, name) -> None:
    for question in PROMPTS[name]:
        text, stats = json_answer(genai, name, question, canonical(SCHEMAS[name]))
        assert stats.finish == "stop", (question, text)
        fits(text, SCHEMAS[name])


@pytest.mark.slow
def test_a_schema_the_grammar_compiler_refuses_is_refused_before_the_answer(genai) -> None:
    with pytest.raises(SettingsError, match=f"This JSON schema cannot be used: {REFUSED}"):
        genai.check_settings(GenerationSettings(json_schema=json.dumps(BAD_PATTERN)))
    text, _ = json_answer(genai, "person", PROMPTS["person"][0], canonical(SCHEMAS["person"]))
    fits(text, SCHEMAS["person"])  # the engine answers on


@pytest.mark.slow
@pytest.mark.parametrize("schema, words", [
    ({"$ref": "#"}, "no JSON value fits it"),
    ({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}, "no JSON value fits"),
    ({"type": "string", "minLength": 10, "maxLength": 2}, "minLength 10 is greater than maxLength 2"),
])
def test_a_schema_no_value_fits_is_refused(genai, schema, words) -> None:
    with pytest.raises(SettingsError, match=words):
        genai.check_settings(GenerationSettings(json_schema=json.dumps(schema)))


@pytest.mark.slow
def test_a_batch_recovers_from_a_schema_that_fails_in_it(bundled) -> None:
    """Should a schema get past the check and fail inside the batch, the answers in that
    step fail with it, and the next ones are answered."""
    engine = load_engine(bundled.folder, RuntimeSettings(engine="genai"), concurrency=2)
    try:
        prompt = engine.render([{"role": "user", "content": "Hello"}])
        bad = engine.answer(prompt, GenerationSettings(max_new_tokens=5, json_schema=json.dumps(BAD_PATTERN)))
        with pytest.raises(RuntimeError, match=REFUSED):
            "".join(bad)
        text, _ = json_answer(engine, "person", PROMPTS["person"][0], canonical(SCHEMAS["person"]))
        fits(text, SCHEMAS["person"])
    finally:
        engine.close()


@pytest.mark.slow
def test_the_optimum_engine_refuses_answers_as_json_and_says_which_engines_can(bundled) -> None:
    engine = load_engine(bundled.folder, RuntimeSettings(engine="optimum"))
    with pytest.raises(SettingsError, match="Answers as JSON need the genai or openai engine"):
        engine.check_settings(GenerationSettings(json_schema=JSON_OBJECT))
    engine.check_settings(GenerationSettings())


# --- /v1 with the openai client -----------------------------------------------------------------
def client(app: AppProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{app.url}v1", api_key="unused", max_retries=0, timeout=120)


def schema_format(name: str) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": SCHEMAS[name], "strict": True}}


def ask(app: AppProcess, name: str, question: str, response_format: dict, stream: bool) -> tuple[str, str]:
    """The answer's text and finish reason."""
    messages = [{"role": "system", "content": instruction(name) if name in SCHEMAS else "Answer in JSON."},
                {"role": "user", "content": question}]
    fields = dict(model="bundled", messages=messages, temperature=0, max_tokens=300, response_format=response_format)
    if not stream:
        choice = client(app).chat.completions.create(**fields).choices[0]
        return choice.message.content, choice.finish_reason
    text, finish = "", None
    for chunk in client(app).chat.completions.create(**fields, stream=True):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    return text, finish


@pytest.mark.server
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_json_schema_answers_through_the_openai_client_parse_and_fit(app_server, engine_name, stream) -> None:
    if engine_name == "optimum":
        with pytest.raises(openai.BadRequestError, match="Answers as JSON need the genai or openai engine"):
            ask(app_server, "person", PROMPTS["person"][0], schema_format("person"), stream)
        return
    for name in ("person", "recipe", "event", "maybe"):
        for question in PROMPTS[name][:2]:
            text, finish = ask(app_server, name, question, schema_format(name), stream)
            assert finish == "stop", (question, text)
            fits(text, SCHEMAS[name])


@pytest.mark.server
def test_json_object_answers_are_objects_when_they_end(app_server, engine_name) -> None:
    """json_object holds the answer to any JSON object; one the token limit cuts short
    cannot parse, and says so with finish_reason "length", as OpenAI's does."""
    if engine_name == "optimum":
        return
    ended = 0
    for question in OBJECT_PROMPTS:
        text, finish = ask(app_server, "object", question, {"type": "json_object"}, stream=True)
        assert text.lstrip().startswith("{"), text
        if finish == "stop":
            assert isinstance(json.loads(text), dict)
            ended += 1
        else:
            assert finish == "length"
    assert ended, "no json_object answer ended within 300 tokens"


@pytest.mark.server
def test_a_schema_that_cannot_be_kept_is_a_400_naming_what(app_server, engine_name) -> None:
    refused = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}}}
    with pytest.raises(openai.BadRequestError, match="uniqueItems") as caught:
        ask(app_server, "x", "Hello", refused, stream=False)
    assert caught.value.body["param"] == "response_format"
    if engine_name != "optimum":
        bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": BAD_PATTERN}}
        with pytest.raises(openai.BadRequestError, match=REFUSED):
            ask(app_server, "x", "Hello", bad, stream=True)
    text, _ = ask(app_server, "person", PROMPTS["person"][0], {"type": "text"}, stream=False)  # the server answers on
    assert text


@pytest.mark.server
def test_the_page_api_takes_a_schema(app_server, engine_name) -> None:
    """/chat's `json_schema`: the answer fits it; the optimum engine refuses it in words."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    def chat(schema: str) -> str:
        return Client(app_server.url, verbose=False).predict(
            message=PROMPTS["person"][0], history=[], max_new_tokens=200, temperature=0, json_schema=schema,
            api_name="/chat")

    if engine_name == "optimum":
        with pytest.raises(AppError, match="Answers as JSON need the genai or openai engine"):
            chat(canonical(SCHEMAS["person"]))
        return
    fits(chat(canonical(SCHEMAS["person"])), SCHEMAS["person"])
    with pytest.raises(AppError, match="uniqueItems"):
        chat(json.dumps({"type": "array", "uniqueItems": True}))
