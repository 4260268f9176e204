"""JSON schemas the structured-output tests validate every sampled output against (and that
benchmarks/grammar_bench.py times): nested objects, arrays, enums, bounded numbers, required and optional
properties, as users send them."""

from __future__ import annotations

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "email": {"type": "string", "maxLength": 16},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}

ORDER = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "status": {"enum": ["pending", "shipped", "delivered"]},
        "items": {
            "type": "array",
            "minItems": 1,
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {"sku": {"type": "string", "maxLength": 8},
                               "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
                "required": ["sku", "qty"],
                "additionalProperties": False,
            },
        },
        "gift": {"type": "boolean"},
    },
    "required": ["id", "status", "items"],
    "additionalProperties": False,
}

READING = {
    "type": "object",
    "properties": {
        "sensor": {"enum": ["temp", "humidity"]},
        "value": {"type": "number", "minimum": -40, "maximum": 60},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 2},
        "location": {"type": "object", "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                     "required": ["lat", "lon"], "additionalProperties": False},
    },
    "required": ["sensor", "value", "location"],
    "additionalProperties": False,
}

WEATHER_ARGS = {  # a tool's parameters, as OpenAI's tool-calling examples have them
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20},
                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}

SCHEMAS = {"person": PERSON, "order": ORDER, "reading": READING, "weather_args": WEATHER_ARGS}
