"""Offline schema validation for tests/install.rs.

Reads JSON from stdin: {"versions": [...], "builtin": [objects], "crds": [CRD objects],
"custom": [objects]}. Built-in kinds are validated with kubernetes-validate (strict: unknown
fields are errors) against every Kubernetes version given; custom kinds against the
openAPIV3Schema of their CRD, made strict the same way (an object schema with properties and no
additionalProperties / x-kubernetes-preserve-unknown-fields rejects unknown fields, as the API
server would prune them). CEL rules (x-kubernetes-validations) are not evaluated here.
Prints one line per object; exits 1 when any object fails, 2 when a tool is missing.
"""

import copy
import json
import sys

try:
    import jsonschema
    import kubernetes_validate
except ImportError as err:  # the test turns this into a failure with the reason
    print(f"MISSING: {err}; install with `python3 -m pip install kubernetes-validate`")
    sys.exit(2)


def describe(obj):
    meta = obj.get("metadata") or {}
    name = meta.get("name", "?")
    if meta.get("namespace"):
        name = f"{meta['namespace']}/{name}"
    return f"{obj.get('apiVersion')} {obj.get('kind')} {name}"


def strict(schema, root=False):
    schema = copy.deepcopy(schema)

    def walk(node):
        if not isinstance(node, dict):
            return
        if node.get("nullable") is True and "type" in node:
            node["type"] = [node["type"], "null"]
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for key in ("properties", "patternProperties", "definitions"):
            for child in (node.get(key) or {}).values():
                walk(child)
        for key in ("items", "additionalProperties", "not"):
            if isinstance(node.get(key), dict):
                walk(node[key])
        for key in ("allOf", "anyOf", "oneOf"):
            for child in node.get(key) or []:
                walk(child)

    if root:
        props = schema.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    walk(schema)
    if root:
        # metadata is validated by the API server, not by the CRD schema.
        schema["properties"]["metadata"] = {"type": "object"}
    return schema


def main():
    request = json.load(sys.stdin)
    failures = 0
    for obj in request["builtin"]:
        for version in request["versions"]:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
                print(f"ok {describe(obj)} (Kubernetes {version})")
            except Exception as err:  # ValidationError, SchemaNotFoundError, ...
                failures += 1
                message = getattr(err, "message", str(err))
                path = "/".join(str(p) for p in getattr(err, "path", []) or [])
                print(f"FAIL {describe(obj)} (Kubernetes {version}): {path}: {message}")
    schemas = {}
    for crd in request["crds"]:
        spec = crd["spec"]
        for version in spec["versions"]:
            key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
            schemas[key] = strict(version["schema"]["openAPIV3Schema"], root=True)
    for obj in request["custom"]:
        key = (obj.get("apiVersion"), obj.get("kind"))
        schema = schemas.get(key)
        if schema is None:
            failures += 1
            print(f"FAIL {describe(obj)}: no CRD schema for {key}")
            continue
        errors = sorted(
            jsonschema.Draft4Validator(schema).iter_errors(obj), key=lambda e: list(e.path)
        )
        if errors:
            failures += 1
            for error in errors:
                path = "/".join(str(p) for p in error.path)
                print(f"FAIL {describe(obj)}: {path}: {error.message}")
        else:
            print(f"ok {describe(obj)} (CRD schema)")
    sys.exit(1 if failures else 0)


main()
