"""``python -m benchmarks <name> [--quick]``: run one benchmark and write its results.

Each benchmark writes ``benchmarks/results/<name>.json`` and ``<name>.md``.
``python -m benchmarks`` alone lists the benchmarks; ``python -m benchmarks status`` lists
the committed results with the commit each measured, and marks a result **stale** when the
code it measures (``MEASURES``) changed since.
``python -m benchmarks plots`` draws every result's figures again from the committed JSON
(``benchmarks/results/plots/*.svg``) without running anything.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks._report import MEASURES, RESULTS_DIR, markdown_table, redraw_plots, staleness

# name -> (module with ``run(quick, results_dir) -> int``, what it measures); a module may
# also have ``add_arguments(parser)``: its options reach ``run`` as keyword arguments.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "mesh_hop": ("benchmarks.mesh_hop",
                 "Echo through gateway -> NATS -> node, and colocated, vs plain gRPC "
                 "(p50/p99, req/s at concurrency 1 and 64)"),
    "auth_overhead": ("benchmarks.auth_overhead",
                      "The mesh hop with auth, RBAC, rate limits and audit on vs off, vs "
                      "plain gRPC (on/off p50 at c=1, req/s at c=64)"),
    "observability": ("benchmarks.observability",
                      "The mesh hop with metrics on (the default), traced at 100 % and at "
                      "1 % to a local OTLP receiver, vs everything off (p50 at c=1, req/s "
                      "at c=64)"),
    "embedder": ("benchmarks.embedder",
                 "Triton embedder with and without dynamic batching at concurrency 32, and "
                 "in-process sentence-transformers (sentences/s)"),
    "router_overhead": ("benchmarks.router_overhead",
                        "Streamed completions through the mesh's model router and LiteLLM's "
                        "Router vs the OpenAI SDK direct (added p50 ms at c=1 and 8)"),
    "http_api": ("benchmarks.http_api",
                 "Streamed completions on the gateway's OpenAI-compatible HTTP door vs its "
                 "gRPC Generate, the OpenAI SDK direct and LiteLLM's proxy (added p50 ms at "
                 "c=1, streams/s at c=64), and Echo as gRPC-web through Envoy vs gRPC"),
    "generator": ("benchmarks.generator",
                  "Triton generator tokens/s and first token through the mesh vs direct "
                  "and Triton's SDK, at c=1 and 4 (--size tiny|small|1b)"),
    "tasks": ("benchmarks.tasks",
              "Durable tasks through the mesh vs Celery on Redis, like for like (server CPU "
              "per task, single-task p50, tasks/s; one per call and batches; no-op and 10 ms "
              "sleep; 1 vs 1 and 2 vs 2)"),
    "recall": ("benchmarks.recall",
               "Perfect Recall's search through the mesh vs ChromaDB, numpy brute force "
               "and Milvus-lite at 10k/100k/1M memories (p50/p99 ms, recall@10, "
               "inserts/s; --sizes)"),
    "creative": ("benchmarks.creative",
                 "Creative's sets of 5 vs 5 plain concurrent samples of a simulated hivemind "
                 "model: wall / slowest call, Vendi ratio, mean cosine, added ms "
                 "(--adherence, --paths)"),
    "workflows": ("benchmarks.workflows",
                  "Durable workflows of no-op steps: the Coordinator vs a Temporal dev server "
                  "and DBOS on SQLite (added ms per step p50/p99, start ms, one-step runs/s, "
                  "fan-out of 100; the mesh path is not measured until the engine exists)"),
    "cluster": ("benchmarks.cluster",
                "The cluster profile (3 clustered nats-servers, Milvus server, 2 gateways "
                "behind Envoy, 3 nodes) under a mixed load while leaders, nodes, gateways "
                "and Milvus fail (lost, duplicated, max unavailable s), and scale-out with "
                "1-3 nodes (tasks/s, calls/s, CPU per process)"),
}


def status(results_dir: Path = RESULTS_DIR) -> str:
    """A table of the results under ``results_dir``: commit, date, mode, and whether stale."""
    rows = []
    for path in sorted(results_dir.glob("*.json")):
        name = next((n for n in sorted(BENCHMARKS, key=len, reverse=True)
                     if path.stem == n or path.stem.startswith(n + "-")), None)
        if name is None:
            continue
        data = json.loads(path.read_text())
        record = data.get("record") or data.get("revision") or {}
        changed = staleness(data, ("benchmarks/" + name + ".py", *MEASURES[name]))
        verdict = ("current" if not changed else
                   "**stale**: " + ", ".join(f"`{c}`" for c in changed[:4])
                   + (f" and {len(changed) - 4} more" if len(changed) > 4 else ""))
        date = record.get("date") or (data.get("machine") or {}).get("date", "?")
        rows.append([f"`{path.name}`", str(data.get("mode", "?")),
                     f"`{record.get('commit', '?')}`", str(date)[:10], verdict])
    return markdown_table(["result", "mode", "commit", "date", "against HEAD"], rows)


def _listing() -> str:
    width = max(len(name) for name in BENCHMARKS)
    return ("benchmarks:\n" + "\n".join(f"  {name:<{width}}  {about}"
                                        for name, (_, about) in BENCHMARKS.items())
            + f"\n  {'status':<{width}}  the committed results: commit, date, stale or not"
            + f"\n  {'plots':<{width}}  draw the results' figures (results/plots/*.svg) again "
            "from the committed JSON")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="Run a revo benchmark.",
        epilog=_listing(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", choices=sorted(BENCHMARKS),
                        help="the benchmark to run (omit to list them)")
    parser.add_argument("--quick", action="store_true",
                        help="a short run (fewer rounds, shorter cells) for a quick check")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR,
                        help=f"directory for the results (default: {RESULTS_DIR})")
    if list(argv if argv is not None else sys.argv[1:])[:1] == ["status"]:
        print(status())
        return 0
    if list(argv if argv is not None else sys.argv[1:])[:1] == ["plots"]:
        for path in redraw_plots():  # from the committed JSON: nothing runs
            print(path.relative_to(RESULTS_DIR))
        return 0
    args, _ = parser.parse_known_args(argv)
    if args.name is None:
        parser.parse_args(argv)  # unknown options are errors
        print(_listing())
        return 0
    module = importlib.import_module(BENCHMARKS[args.name][0])
    common = set(vars(args))
    if hasattr(module, "add_arguments"):  # the benchmark's own options, e.g. --size
        module.add_arguments(parser)
    args = parser.parse_args(argv)
    own = {key: value for key, value in vars(args).items() if key not in common}
    run: Callable[..., int] = module.run
    try:
        return run(quick=args.quick, results_dir=args.out, **own)
    except KeyboardInterrupt:
        print(f"{args.name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
