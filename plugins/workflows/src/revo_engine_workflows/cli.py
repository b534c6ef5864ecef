"""``revo workflows``: define workflows from files, list them, run one and watch it.

::

    revo workflows apply triage.yaml      # check, then store as the next version
    revo workflows apply triage.yaml --check
    revo workflows list
    revo workflows run triage --input '{"issue": 42}'    # prints the events, then the output

A definition file is the ``Workflow`` message as YAML or JSON, with proto3 JSON field names
(``requestExpr`` or ``request_expr``; both are accepted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from mesh.engine import hookimpl
from revo_engine_workflows.v1 import workflows_pb2 as pb
from revo_engine_workflows.v1 import workflows_pb2_grpc

__all__ = ["load_definition", "revo_commands"]


def load_definition(path: Path) -> pb.Workflow:
    """The workflow in a YAML or JSON file; ValueError saying what is wrong and where."""
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as error:
        raise ValueError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                         f"{error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the file must hold one workflow (a mapping with name and "
                         "steps)")
    try:
        return json_format.ParseDict(data, pb.Workflow())
    except json_format.ParseError as error:
        raise ValueError(f"{path}: {error}") from None


@hookimpl
def revo_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from mesh.cli_support import add_command

    workflows = add_command(
        commands, "workflows", help="the Coordinator: define, list and run workflows",
        description="The Coordinator from the command line: check and store workflow "
        "definitions (YAML or JSON), list them, start a run and follow its events. Signs in "
        "like revo call (REVO_API_KEY, REVO_TOKEN, or the local operator).",
        examples=["revo workflows apply triage.yaml", "revo workflows list --json",
                  "revo workflows run triage --input '{\"issue\": 42}'"])
    workflows.add_argument("--address", help="the gateway (default: REVO_URL, else the "
                           "running revo up's)")
    actions = workflows.add_subparsers(dest="action", required=True, metavar="ACTION")
    apply = add_command(
        actions, "apply", help="check a definition (YAML or JSON) and store it as the "
        "workflow's next version",
        description="Check a workflow definition (the Workflow message as YAML or JSON) and "
        "store it as the workflow's next version; an identical definition stores nothing.",
        examples=["revo workflows apply triage.yaml",
                  "revo workflows apply triage.yaml --check   # check only"])
    apply.add_argument("file", type=Path)
    apply.add_argument("--check", action="store_true", help="check only; store nothing")
    apply.set_defaults(func=_sync(_apply))
    listing = add_command(
        actions, "list", help="every workflow's latest version",
        description="Every workflow's latest version, with its number of steps and "
        "description.",
        examples=["revo workflows list", "revo workflows list --json | jq -r "
                  "'.workflows[].name'"])
    listing.add_argument("--json", action="store_true", help="as JSON: {\"workflows\": "
                         "[{name, version, steps, description}]}")
    listing.set_defaults(func=_sync(_list))
    run = add_command(
        actions, "run", help="start a run and print its events until it ends",
        description="Start a run of a workflow and print its events until it ends, then its "
        "state and output as JSON (exit code 1 when it did not succeed).",
        examples=["revo workflows run triage --input '{\"issue\": 42}'",
                  "revo workflows run triage --key issue-42 --detach   # print the run id"])
    run.add_argument("name")
    run.add_argument("--version", type=int, default=0, help="0: the latest")
    run.add_argument("--input", default="null", help="the run's input, as JSON")
    run.add_argument("--key", default="", help="an idempotency key: the same key starts "
                     "one run")
    run.add_argument("--detach", action="store_true", help="print the run id and return")
    run.add_argument("--wait", type=float, default=3600.0, help="seconds to follow the run "
                     "before giving up (it goes on; GetRun shows it later)")
    run.set_defaults(func=_sync(_run))


def _sync(command: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(asyncio.run(command(args)))
        except grpc.aio.AioRpcError as error:
            from mesh.cli import gateway_failure

            raise gateway_failure(args, error, f"revo workflows {args.action}") from None
        except ValueError as error:
            print(f"revo workflows: {error}", file=sys.stderr)
            return 2
    return run


def _client(args: argparse.Namespace) -> Any:
    from mesh.cli import operator_client

    return operator_client(args)


async def _apply(args: argparse.Namespace) -> int:
    workflow = load_definition(args.file)
    async with _client(args) as client:
        stub = workflows_pb2_grpc.WorkflowServiceStub(client.channel)
        if args.check:
            await stub.ValidateWorkflow(pb.ValidateWorkflowRequest(workflow=workflow))
            print(f"{workflow.name}: valid")
            return 0
        reply = await stub.CreateWorkflow(pb.CreateWorkflowRequest(workflow=workflow))
    stored = reply.workflow
    print(f"{stored.name}: version {stored.version}"
          + (" (created)" if reply.created else " (unchanged: identical to the latest)"))
    return 0


async def _list(args: argparse.Namespace) -> int:
    found: list[pb.Workflow] = []
    async with _client(args) as client:
        stub = workflows_pb2_grpc.WorkflowServiceStub(client.channel)
        found += (await stub.ListWorkflows(pb.ListWorkflowsRequest())).workflows
    if args.json:
        from mesh.cli_support import print_json

        print_json({"workflows": [{"name": w.name, "version": w.version,
                                   "steps": len(w.steps), "description": w.description}
                                  for w in found]})
        return 0
    for workflow in found:
        print(f"{workflow.name:<24} v{workflow.version:<4} {len(workflow.steps)} steps  "
              f"{workflow.description}")
    if not found:
        print("no workflows yet: revo workflows apply FILE")
    return 0


async def _run(args: argparse.Namespace) -> int:
    try:
        value = json.loads(args.input)
    except ValueError as error:
        raise ValueError(f"--input is not JSON: {error}") from None
    request = pb.StartRunRequest(workflow=args.name, version=args.version,
                                 idempotency_key=args.key)
    json_format.ParseDict(value, request.input)
    async with _client(args) as client:
        stub = workflows_pb2_grpc.WorkflowServiceStub(client.channel)
        started = await stub.StartRun(request)
        run = started.run
        print(f"run {run.id} ({run.workflow} v{run.version})"
              + ("" if started.started else ": already started with this key"))
        if args.detach:
            return 0
        async for response in stub.WatchRun(pb.WatchRunRequest(run_id=run.id),
                                            timeout=args.wait):
            event = response.event
            kind = event.WhichOneof("event") or "?"
            detail = getattr(event, kind)
            text = json_format.MessageToJson(detail, indent=None) if kind else ""
            print(f"{event.sequence:>4} {kind:<16} {event.step_id:<20} {text}"[:300])
        final = (await stub.GetRun(pb.GetRunRequest(run_id=run.id))).run
    print(json.dumps({"state": pb.RunState.Name(final.state),
                      "output": json_format.MessageToDict(final.output)
                      if final.HasField("output") else None,
                      "error": final.error or None}))
    return 0 if final.state == pb.RUN_STATE_SUCCEEDED else 1
