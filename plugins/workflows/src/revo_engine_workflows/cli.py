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
from datetime import UTC
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
    runs = add_command(
        actions, "runs", help="runs, newest first",
        description="Runs, newest first (every workflow's, or one's; every state, or one), "
        "up to --limit, read a page at a time. Steps are left out: revo call "
        "revo.workflows.v1.WorkflowService/GetRun shows a run whole.",
        examples=["revo workflows runs", "revo workflows runs --workflow triage --state "
                  "failed --limit 20", "revo workflows runs --json | jq -r '.runs[].id'"])
    runs.add_argument("--workflow", default="", help="only this workflow's runs")
    runs.add_argument("--state", choices=[_state_name(v) for v in pb.RunState.values()
                                          if v != pb.RUN_STATE_UNSPECIFIED],
                      help="only runs in this state")
    runs.add_argument("--limit", type=int, default=50, help="at most this many (default 50; "
                      "0 for all)")
    runs.add_argument("--json", action="store_true", help="as JSON: {\"runs\": [{id, "
                      "workflow, version, state, started_by, created_at, finished_at, "
                      "error}]}")
    runs.set_defaults(func=_sync(_runs))

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


def _state_name(value: int) -> str:
    return pb.RunState.Name(value).removeprefix("RUN_STATE_").lower()  # type: ignore[arg-type]


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
        request = pb.ListWorkflowsRequest(page_size=1000)
        while True:  # every page
            listed = await stub.ListWorkflows(request)
            found += listed.workflows
            if not listed.next_page_token:
                break
            request.page_token = listed.next_page_token
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


def _run_json(run: pb.Run) -> dict[str, Any]:
    def when(stamp: Any, present: bool) -> str | None:
        return str(stamp.ToDatetime(tzinfo=UTC).isoformat()) if present else None

    return {"id": run.id, "workflow": run.workflow, "version": run.version,
            "state": _state_name(run.state), "started_by": run.started_by,
            "created_at": when(run.created_at, run.HasField("created_at")),
            "finished_at": when(run.finished_at, run.HasField("finished_at")),
            "error": run.error or None}


async def _runs(args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise ValueError("--limit must be 0 (all) or more")
    state = pb.RunState.Value(f"RUN_STATE_{args.state.upper()}") if args.state else 0
    found: list[pb.Run] = []
    async with _client(args) as client:
        stub = workflows_pb2_grpc.WorkflowServiceStub(client.channel)
        request = pb.ListRunsRequest(workflow=args.workflow, state=state,  # type: ignore[arg-type]
                                     page_size=min(args.limit or 1000, 1000))
        while not args.limit or len(found) < args.limit:
            listed = await stub.ListRuns(request)
            found += listed.runs
            if not listed.next_page_token:
                break
            request.page_token = listed.next_page_token
    found = found[:args.limit] if args.limit else found
    if args.json:
        from mesh.cli_support import print_json

        print_json({"runs": [_run_json(run) for run in found]})
        return 0
    for run in found:
        row = _run_json(run)
        print(f"{run.id:<28} {run.workflow:<20} v{run.version:<4} {row['state']:<10} "
              f"{row['created_at'] or '-':<32} {run.error[:60]}")
    if not found:
        print("no runs" + (f" of {args.workflow}" if args.workflow else "")
              + (f" in state {args.state}" if args.state else ""))
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
