"""JSON Schemas of every record prefkit writes (the repository's schemas/, installed as prefkit.schemas)."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from prefkit.errors import PrefkitError
from prefkit.resources import schema_dir


@cache
def load_schema(name: str) -> dict[str, Any]:
    return json.loads((schema_dir() / f"{name}.schema.json").read_text())


@cache
def _registry():
    """Every schema of schemas/, by its $id: a $ref between them resolves locally. Any other reference
    is an error; the validator never fetches anything from the network."""
    from referencing import Registry, Resource
    from referencing.exceptions import NoSuchResource

    def refuse(uri: str):
        raise NoSuchResource(ref=uri)

    resources = []
    for path in sorted(schema_dir().glob("*.schema.json")):
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], Resource.from_contents(schema)))
    return Registry(retrieve=refuse).with_resources(resources)


@cache
def _validator(name: str):
    """One validator per schema: building it costs more than checking a record (label sets are read
    record by record)."""
    import jsonschema

    return jsonschema.Draft202012Validator(
        load_schema(name), registry=_registry(), format_checker=jsonschema.FormatChecker()
    )


def validate(record: Any, name: str, where: str = "record") -> None:
    """Raise PrefkitError naming ``where`` and the failing key if ``record`` breaks schema ``name``."""
    errors = sorted(_validator(name).iter_errors(record), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        key = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise PrefkitError(f"{where}: key {key}: {e.message} (schemas/{name}.schema.json)")
