"""A stage's ``Params`` made of just the config keys its code reads, each as its config section declares it.

The config sections (``DataParams``, ``LoraParams``, ...) group keys for people; a stage often needs a few keys
from several sections. ``pick`` builds that stage's model from the named fields only (type, default, range,
description and validators kept), so a node carries, binds and shows nothing it does not read
(tests/test_stage_params.py checks every registered stage's fields against its code).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, create_model


def pick(name: str, doc: str, sections: tuple[type[BaseModel], ...], fields: tuple[str, ...]) -> type[BaseModel]:
    """A pydantic model ``name`` with the ``fields`` of ``sections`` (a name missing from them is a ValueError)."""
    found = {}
    for field in fields:
        owner = next((s for s in sections if field in s.model_fields), None)
        if owner is None:
            raise ValueError(f"{name}: no section among {[s.__name__ for s in sections]} declares {field!r}")
        info = owner.model_fields[field]
        found[field] = (info.annotation, info)
    return create_model(name, __config__=ConfigDict(extra="forbid"), __doc__=doc, **found)
