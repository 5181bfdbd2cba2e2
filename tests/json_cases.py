"""Prompts and JSON schemas shared by tests/test_json_answers.py and bench/json_answers.py:
shapes an API client asks for (flat records, enums, arrays, nesting, references, patterns,
formats), each with a question the bundled model can answer."""

from __future__ import annotations

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 40}, "age": {"type": "integer", "minimum": 0,
                                                                         "maximum": 130}},
    "required": ["name", "age"], "additionalProperties": False,
}
SENTIMENT = {
    "type": "object",
    "properties": {"sentiment": {"enum": ["positive", "negative", "neutral"]},
                   "confidence": {"type": "number", "minimum": 0, "maximum": 1}},
    "required": ["sentiment", "confidence"], "additionalProperties": False,
}
TAGS = {
    "type": "object",
    "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "minItems": 1,
                            "maxItems": 5}},
    "required": ["tags"], "additionalProperties": False,
}
RECIPE = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 60},
        "ingredients": {"type": "array", "maxItems": 6, "items": {
            "type": "object", "properties": {"item": {"type": "string", "maxLength": 30},
                                             "grams": {"type": "integer", "minimum": 1, "maximum": 5000}},
            "required": ["item", "grams"], "additionalProperties": False}},
        "vegetarian": {"type": "boolean"},
    },
    "required": ["title", "ingredients", "vegetarian"], "additionalProperties": False,
}
ADDRESS = {
    "type": "object",
    "$defs": {"place": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                                         "country": {"type": "string", "maxLength": 40}},
                        "required": ["city", "country"], "additionalProperties": False}},
    "properties": {"home": {"$ref": "#/$defs/place"}, "work": {"$ref": "#/$defs/place"}},
    "required": ["home", "work"], "additionalProperties": False,
}
EVENT = {
    "type": "object",
    "properties": {"event": {"type": "string", "maxLength": 50}, "date": {"type": "string", "format": "date"},
                   "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"}},
    "required": ["event", "date", "code"], "additionalProperties": False,
}
MAYBE = {
    "type": "object",
    "properties": {"answer": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                   "unit": {"type": ["string", "null"], "maxLength": 20}},
    "required": ["answer", "unit"], "additionalProperties": False,
}

SCHEMAS: dict[str, dict] = {
    "person": PERSON, "sentiment": SENTIMENT, "tags": TAGS, "recipe": RECIPE, "address": ADDRESS,
    "event": EVENT, "maybe": MAYBE,
}
PROMPTS: dict[str, list[str]] = {
    "person": ["Describe a famous scientist.", "Who wrote Hamlet, and how old did he live to be?",
               "Invent a character for a children's story."],
    "sentiment": ["Classify: 'I loved this film, the music was wonderful.'", "Classify: 'The train was late again.'",
                  "Classify: 'The meeting is at noon.'"],
    "tags": ["Give keywords for an article about solar panels on school roofs.", "Tag this: a recipe for pancakes.",
             "Keywords for a travel guide to Lisbon."],
    "recipe": ["A simple tomato soup.", "How do I make pancakes?", "A salad for two people."],
    "address": ["Ada lives in Paris and works in Lyon.", "Make up where a teacher lives and works.",
                "Tom's home is in Berlin; his office is in Hamburg."],
    "event": ["The product launch on 12 March 2025, ticket code ABC-123.", "Invent a concert with a date and a code.",
              "A meeting on the first of June 2024."],
    "maybe": ["How tall is the Eiffel Tower?", "How many legs does a spider have?", "What is the meaning of life?"],
}
# For json_object (any JSON object): questions with a small, obvious answer.
OBJECT_PROMPTS = ["Give the capital of France as JSON.", "The numbers one, two and three as a JSON object.",
                  "A JSON object with the name and colour of a fruit."]


def instruction(name: str) -> str:
    """The same request in words, for answers without the constraint (and with it, so both
    read the same prompt)."""
    import json

    return f"Answer only with JSON that fits this JSON Schema, nothing else:\n{json.dumps(SCHEMAS[name])}"
