"""The workflows the Coordinator ships: ``solve`` (``builtin/solve.yaml``).

A built-in is stored as a version of its name the first time a node is asked for it
(``StartRun``, ``GetWorkflow``, ``ListWorkflows``), checked against the mesh as it is then,
so a mesh that lacks an engine it calls says which. A release that changes a built-in
stores it as the next version; runs already started keep theirs.
"""

from __future__ import annotations

import functools
from importlib import resources

import yaml
from google.protobuf import json_format

from revo_engine_workflows.v1 import workflows_pb2 as pb

__all__ = ["BUILTINS", "BUILTIN_AUTHOR", "builtin"]

BUILTINS = ("solve",)
BUILTIN_AUTHOR = "revo (built-in)"
"""``Workflow.created_by`` of a built-in's versions."""


@functools.cache
def _definition(name: str) -> bytes:
    text = resources.files(__package__).joinpath(f"builtin/{name}.yaml").read_text()
    return json_format.ParseDict(yaml.safe_load(text), pb.Workflow()).SerializeToString()


def builtin(name: str) -> pb.Workflow:
    """A fresh copy of built-in workflow ``name``."""
    return pb.Workflow.FromString(_definition(name))
