"""Answers as JSON: the JSON Schema an answer must fit, checked before it is asked for.

The genai engines constrain every token to the schema (openvino-genai's structured output,
XGrammar), so the answer parses and fits it. XGrammar does not enforce every JSON Schema
keyword: it ignores some in silence, and an answer would then not fit the schema it was
promised. A schema that uses one of those is refused here, naming it, so a client knows
before any token is generated. Schemas are kept as canonical JSON text (settings are
plain values).

OpenAI's `response_format` maps onto a schema: `json_object` is `{"type": "object"}`,
`json_schema` carries its own; `text` is no schema.

Nothing here depends on the rest of phi3ui: callers turn a message into their own error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

JSON_OBJECT = '{"type":"object"}'  # canonical()'s text of json_object's schema
MAX_SCHEMA_CHARS = 16_000
# Bounds on what the grammar compiler must build. It compiles on the server, under one lock,
# and a string length or a pattern's repeat count is unrolled into grammar states: without
# bounds a few dozen characters of schema take seconds to compile (bench/NOTES.md).
MAX_DEPTH = 32  # nested objects and arrays in the schema's JSON
MAX_STRING_LENGTH = 200  # minLength / maxLength of one string
MAX_LENGTH_BOUNDS = 400  # those bounds added up, each different (min, max) pair once
MAX_PATTERN_CHARS = 200
MAX_PATTERN_REPEAT = 50  # each {n} / {m,n} of a pattern
_REPEATS = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")

# Keywords XGrammar (as built into openvino-genai 2026.4) accepts but does not enforce,
# each seen producing answers that break it (bench/NOTES.md, "Answers as JSON").
NOT_ENFORCED: dict[str, str] = {
    "uniqueItems": "items are not kept unique",
    "multipleOf": "numbers are not kept to multiples",
    "not": "a negated schema is not enforced",
    "if": "conditional schemas (if/then/else) are not enforced",
    "then": "conditional schemas (if/then/else) are not enforced",
    "else": "conditional schemas (if/then/else) are not enforced",
    "oneOf": "oneOf is enforced as anyOf (use anyOf)",
    "dependentRequired": "dependent requirements are not enforced",
    "dependentSchemas": "dependent schemas are not enforced",
    "dependencies": "dependent requirements are not enforced",
    "propertyNames": "property names are not constrained",
    "unevaluatedProperties": "unevaluated properties are not enforced",
    "unevaluatedItems": "unevaluated items are not enforced",
    "$dynamicRef": "dynamic references are not followed",
    "contains": "an array is not held to contain a matching item",
    "minContains": "an array is not held to contain a matching item",
    "maxContains": "an array is not held to contain a matching item",
}
# Keywords whose values are schemas, or maps or lists of schemas: where nested keywords sit.
_SCHEMA = ("items", "additionalProperties", "contains", "not", "if", "then", "else", "propertyNames",
           "unevaluatedProperties", "unevaluatedItems", "additionalItems")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")


def _walk(schema: Any, path: str) -> Iterator[tuple[str, dict]]:
    """Every subschema with where it sits (`properties.tags.items`)."""
    if not isinstance(schema, dict):
        return
    yield path, schema
    for key in _SCHEMA:
        yield from _walk(schema.get(key), f"{path}.{key}")
    for key in _SCHEMA_MAPS:
        if isinstance(schema.get(key), dict):
            for name, sub in schema[key].items():
                yield from _walk(sub, f"{path}.{key}.{name}")
    for key in _SCHEMA_LISTS:
        if isinstance(schema.get(key), list):
            for i, sub in enumerate(schema[key]):
                yield from _walk(sub, f"{path}.{key}[{i}]")


def unenforced(schema: dict) -> list[str]:
    """What in `schema` would not be enforced, one line each with where it is."""
    found = []
    for path, sub in _walk(schema, "schema"):
        for key, why in NOT_ENFORCED.items():
            if key in sub:
                found.append(f"`{key}` at {path}: {why}")
        if isinstance(sub.get("allOf"), list) and len(sub["allOf"]) > 1:
            found.append(f"`allOf` with {len(sub['allOf'])} schemas at {path}: only one is enforced "
                         "(merge them into one schema)")
        ref = sub.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            found.append(f"`$ref` {ref!r} at {path}: only references inside the schema (#/...) are followed")
        if "format" in sub and ({"minLength", "maxLength"} & set(sub)):
            found.append(f"`minLength`/`maxLength` with `format` at {path}: a formatted string's length is not "
                         "held (bound it with a `pattern` instead)")
    return found


def too_costly(schema: dict) -> list[str]:
    """What in `schema` would take the grammar compiler too long, one line each."""
    found = []
    bounds: set[tuple[int, int]] = set()  # the compiler builds each different pair once
    for path, sub in _walk(schema, "schema"):
        lengths = [sub.get(key) if isinstance(sub.get(key), int) else 0 for key in ("minLength", "maxLength")]
        for key, n in zip(("minLength", "maxLength"), lengths):
            if n > MAX_STRING_LENGTH:
                found.append(f"`{key}` {n} at {path}: at most {MAX_STRING_LENGTH}")
        if any(lengths):
            bounds.add((lengths[0], lengths[1]))
        pattern = sub.get("pattern")
        if isinstance(pattern, str):
            if len(pattern) > MAX_PATTERN_CHARS:
                found.append(f"`pattern` at {path} is {len(pattern)} characters: at most {MAX_PATTERN_CHARS}")
            counts = [int(n) for m in _REPEATS.finditer(pattern) for n in m.groups() if n]
            if any(n > MAX_PATTERN_REPEAT for n in counts):
                found.append(f"`pattern` at {path} repeats {max(counts)} times: at most {MAX_PATTERN_REPEAT}")
    if (total := sum(max(pair) for pair in bounds)) > MAX_LENGTH_BOUNDS:
        found.append(f"string lengths add up to {total} over {len(bounds)} different bounds: at most "
                     f"{MAX_LENGTH_BOUNDS} (strings that share a bound count once)")
    return found


def _too_deep(value: object) -> bool:
    """Whether JSON `value` nests deeper than MAX_DEPTH (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return False


def schema_problem(text: str) -> str | None:
    """Why `text` cannot be an answer's schema, or None when it can. The engine's own
    grammar compiler has the last word (`GenAIEngine.check_settings`)."""
    if len(text) > MAX_SCHEMA_CHARS:
        return f"The JSON schema is {len(text)} characters; the limit is {MAX_SCHEMA_CHARS}."
    try:
        schema = json.loads(text)
    except RecursionError:
        return f"The JSON schema nests deeper than {MAX_DEPTH} levels."
    except ValueError as exc:
        return f"The JSON schema is not valid JSON: {exc}."
    if not isinstance(schema, dict):
        return "The JSON schema must be an object, such as {\"type\": \"object\"}."
    if _too_deep(schema):
        return f"The JSON schema nests deeper than {MAX_DEPTH} levels."
    import jsonschema  # here: the app starts without it until a schema comes

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "".join(f"[{p!r}]" for p in exc.path)
        return f"The JSON schema is not a valid JSON Schema{' at ' + where if where else ''}: {exc.message}."
    if found := unenforced(schema):
        return "This JSON schema uses what constrained decoding cannot enforce: " + "; ".join(found) + "."
    if found := too_costly(schema):
        return "This JSON schema asks for more than the server builds for one answer: " + "; ".join(found) + "."
    return None


def canonical(schema: object) -> str:
    """A schema as the text settings keep: compact, its keys in the client's order (the
    answer's properties come in the order the schema lists them)."""
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)


def response_format_schema(value: object) -> tuple[str, str | None]:
    """OpenAI's `response_format` as (schema text or "", problem or None)."""
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        return "", '`response_format` must be an object with a `type`: "text", "json_object" or "json_schema".'
    kind = value["type"]
    if set(value) - {"type", "json_schema"} or (kind != "json_schema" and "json_schema" in value):
        return "", f"`response_format` of type {kind!r} takes no other fields than those OpenAI defines."
    if kind == "text":
        return "", None
    if kind == "json_object":
        return JSON_OBJECT, None
    if kind != "json_schema":
        return "", f'`response_format.type` {kind!r} is not one of "text", "json_object", "json_schema".'
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        return "", "`response_format.json_schema` must be an object with a `name` and a `schema`."
    if set(spec) - {"name", "description", "schema", "strict"}:
        return "", "`response_format.json_schema` takes `name`, `description`, `schema` and `strict` only."
    if "strict" in spec and not isinstance(spec["strict"], (bool, type(None))):
        return "", "`response_format.json_schema.strict` must be true or false."
    text = canonical(spec.get("schema", {}))
    return text, schema_problem(text)


def response_format(schema: str) -> dict | None:
    """The `response_format` that asks a remote server for answers fitting `schema`."""
    if not schema:
        return None
    if schema == JSON_OBJECT:
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": json.loads(schema), "strict": True}}
