"""The OpenAPI document, with the served model's limits written into the signal schemas.

A client (or a fuzzer) reading ``/openapi.json`` learns the channel count, the shortest and
longest signal, the largest batch and ``k``, and the largest body in bytes (``info``'s
``x-max-body-bytes``): everything a request must respect to be accepted.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from app.schemas import NAME_PATTERN
from app.settings import Settings
from app.signals import NPY_MEDIA_TYPE, SignalLimits

COLLECTION_PREFIX = "/collections/{collection}"  # of every data route, besides its plain path
SIGNAL_ROUTES = ("/embed", "/keypoints", "/search", "/align", "/verify", "/drift")  # + .npy
FLOAT32_MAX = 3.4e38  # larger magnitudes cannot be represented and are refused


def signals_body(model: type) -> dict:
    """OpenAPI for a body read by hand: the JSON schema, or a raw .npy array."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _inline(model.model_json_schema())},
                NPY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
            },
        }
    }


def _inline(schema: dict) -> dict:
    """A model's JSON schema with its nested models (``$defs``) written in place: the schema is
    embedded in the OpenAPI document, where ``#/$defs/...`` would point nowhere."""
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    return resolve(schema)


COMPONENTS = "#/components/schemas/{model}"
BODY_MODELS: list[type[BaseModel]] = []  # JSON bodies read by hand: their schemas are components


def json_body(model: type[BaseModel]) -> dict:
    """OpenAPI for a JSON body read by hand (any content type is read as JSON): a reference to
    the model's schema, which :func:`install` adds to the components as FastAPI would."""
    BODY_MODELS.append(model)
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": COMPONENTS.format(model=model.__name__)}}
            },
        }
    }


def signal_schema(limits: SignalLimits) -> dict:
    samples = {
        "type": "array",
        "items": {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX},
        "minItems": limits.min_length,
        "maxItems": limits.max_length,
    }
    channels_first = {
        "type": "array",
        "items": samples,
        "minItems": limits.in_channels,
        "maxItems": limits.in_channels,
        "description": f"{limits.in_channels} channel(s) of equal length, channels first",
    }
    if limits.in_channels == 1:
        return {"anyOf": [samples, channels_first], "description": "one signal"}
    return channels_first


def _name_keypoints(align_body: dict, keypoint_names: list[str]) -> None:
    """/align's ``keypoints`` and ``target.positions`` take this model's keypoint names only."""
    properties = align_body["properties"]
    for option in properties["keypoints"]["anyOf"]:
        if option.get("type") == "array":
            option["items"]["enum"] = list(keypoint_names)
    target = next(o for o in properties["target"]["anyOf"] if "oneOf" in o)
    for option in target["oneOf"]:
        if "positions" in option["properties"]:
            option["properties"]["positions"]["propertyNames"] = {"enum": list(keypoint_names)}


def _name_collections(spec: dict) -> None:
    """The ``collection`` path parameter of the data routes under COLLECTION_PREFIX (checked
    when the route looks the collection up, not by a dependency of its own: see app/main.py)."""
    parameter = {
        "name": "collection",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": NAME_PATTERN},
        "description": "a collection's name; the routes without /collections/{collection} serve"
        " default",
    }
    for path, operations in spec["paths"].items():
        if not path.startswith(COLLECTION_PREFIX + "/"):
            continue
        for operation in operations.values():
            declared = operation.setdefault("parameters", [])
            if not any(p["name"] == "collection" and p["in"] == "path" for p in declared):
                declared.insert(0, parameter)


def install(
    app: FastAPI, limits: SignalLimits, settings: Settings, keypoint_names: list[str]
) -> None:
    """Replace ``app.openapi`` with one that states this model's and these settings' limits."""

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        spec["info"]["x-max-body-bytes"] = settings.max_body_bytes
        _name_collections(spec)
        signal = signal_schema(limits)
        for path in SIGNAL_ROUTES:
            body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
            properties = body["schema"]["properties"]
            properties["signals"].update({"items": signal, "maxItems": limits.max_batch})
            if "k" in properties:
                properties["k"]["maximum"] = settings.max_k
        _name_keypoints(
            spec["paths"]["/align"]["post"]["requestBody"]["content"]["application/json"]["schema"],
            keypoint_names,
        )
        _, definitions = models_json_schema(
            [(model, "validation") for model in BODY_MODELS], ref_template=COMPONENTS
        )
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(definitions.get("$defs", {}))
        schemas["ReferenceIn"]["properties"]["signal"] = signal
        schemas["ReferencesRequest"]["properties"]["references"]["maxItems"] = limits.max_batch
        app.openapi_schema = spec
        return spec

    app.openapi = openapi
