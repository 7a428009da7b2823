"""Request validation against the Firecracker API spec shipped in this package.

The spec is Swagger 2.0, whose schemas are JSON Schema draft 4; bodies are
checked with ``jsonschema`` (a maintained, complete draft-4 validator) rather
than by hand. Firecracker refuses unknown fields (its request types deny
them) although the spec does not say so: every object schema that lists its
properties and is silent about others is closed here.
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jsonschema
import yaml
from referencing import Registry
from referencing.jsonschema import DRAFT4

SPEC_RESOURCE = "firecracker.yaml"
_URI = "urn:wrennd:firecracker-api"


@dataclass(frozen=True)
class Operation:
    method: str
    template: str
    operation_id: str
    pattern: re.Pattern[str]
    params: tuple[str, ...]
    body_schema: dict[str, Any] | None
    body_required: bool


class SpecError(ValueError):
    """A request does not match the API spec; the message is the fault_message."""


def _close_objects(node: Any) -> None:
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            _close_objects(value)
    elif isinstance(node, list):
        for value in node:
            _close_objects(value)


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where Off/On/Yes/No are booleans; the spec means
    strings (the logger level enum has ``Off``). Booleans are true/false only,
    as in YAML 1.2."""


_BOOL = "tag:yaml.org,2002:bool"
_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


@functools.cache
def load_document() -> dict[str, Any]:
    text = resources.files("wrennd_sim.fcsim").joinpath(SPEC_RESOURCE).read_text()
    doc = yaml.load(text, Loader=_Yaml12Loader)  # a SafeLoader subclass
    if not isinstance(doc, dict) or doc.get("swagger") != "2.0":
        raise RuntimeError(f"{SPEC_RESOURCE}: not a Swagger 2.0 document")
    return doc


class ApiSpec:
    """All operations of the spec, with a draft-4 validator per request body."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.version = str(doc["info"]["version"])
        strict = copy.deepcopy(doc)
        _close_objects(strict["definitions"])
        registry: Registry[Any] = Registry().with_resource(_URI, DRAFT4.create_resource(strict))
        self._registry = registry
        self.operations: list[Operation] = []
        for template, item in doc["paths"].items():
            for method, op in item.items():
                self.operations.append(self._operation(method.upper(), template, op))

    def _operation(self, method: str, template: str, op: dict[str, Any]) -> Operation:
        params = tuple(re.findall(r"{(\w+)}", template))
        regex = re.escape(template)
        for name in params:
            regex = regex.replace(re.escape("{" + name + "}"), rf"(?P<{name}>[^/]+)")
        body_schema = None
        required = False
        for p in op.get("parameters", []):
            if p.get("in") == "body":
                body_schema = _rebase(p["schema"])
                required = bool(p.get("required", False))
        return Operation(
            method,
            template,
            op["operationId"],
            re.compile(regex + "$"),
            params,
            body_schema,
            required,
        )

    def find(self, method: str, path: str) -> tuple[Operation, dict[str, str]]:
        """The operation for a request line; SpecError if the spec has none."""
        for op in self.operations:
            if op.method != method:
                continue
            m = op.pattern.match(path)
            if m is not None:
                return op, m.groupdict()
        raise SpecError(f"Invalid request method and/or path: {method} {path}.")

    @functools.cache  # noqa: B019 - one spec per process, validators are reused
    def _validator(self, operation_id: str) -> jsonschema.Draft4Validator:
        op = next(o for o in self.operations if o.operation_id == operation_id)
        assert op.body_schema is not None
        return jsonschema.Draft4Validator(op.body_schema, registry=self._registry)

    def validate_body(self, op: Operation, body: Any) -> None:
        if op.body_schema is None:
            if body is not None:
                raise SpecError(f"{op.method} {op.template} takes no body")
            return
        if body is None:
            raise SpecError(f"{op.method} {op.template}: a JSON body is required")
        errors = sorted(self._validator(op.operation_id).iter_errors(body), key=_error_key)
        if errors:
            first = errors[0]
            where = "".join(f"[{p!r}]" for p in first.absolute_path) or "the body"
            raise SpecError(
                f"An error occurred when deserializing the json body of a request: "
                f"{first.message} (at {where})"
            )


def _rebase(schema: dict[str, Any]) -> dict[str, Any]:
    """Point the body schema's local $refs at the registered document."""
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        return {"$ref": _URI + ref}
    return schema


def _error_key(e: jsonschema.ValidationError) -> tuple[int, str]:
    return (len(list(e.absolute_path)), e.message)


@functools.cache
def api_spec() -> ApiSpec:
    return ApiSpec(load_document())
