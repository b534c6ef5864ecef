"""A tour of the Python client (docs/client.md) on a running mesh (`revo up` elsewhere).

    export REVO_USERNAME=admin REVO_PASSWORD="$(cat .revo/secrets/admin.password)"
    .venv/bin/python examples/client_tour.py

It queues tasks on Parallel Mind and waits for them, runs a two-step workflow on the
Coordinator and prints its events as they happen, then remembers a fact in Perfect Recall
and finds it by meaning (the mesh embeds it on Triton; skipped when no embedder is up).
Running it twice does no work twice: every write carries an idempotency key.
"""

from __future__ import annotations

from mesh.client import Client
from mesh.errors import FailedPrecondition, Unavailable, Unimplemented
from revo_engine_parallel.v1 import tasks_pb2


def main() -> None:
    with Client.from_env() as revo:
        naps = [revo.tasks.submit("sleep", str(ms), idempotency_key=f"tour-nap-{ms}")
                for ms in (300, 100, 200)]
        for nap in naps:
            done = revo.tasks.wait(nap.id)
            print(f"task {done.id[:8]} {tasks_pb2.TaskState.Name(done.state)} "
                  f"after {done.attempts} attempt(s) on {done.node}")

        revo.workflows.create({"name": "tour", "steps": [
            {"id": "first", "task": {"type": "noop", "payload": "one"}},
            {"id": "second", "needs": ["first"], "task": {"type": "sleep", "payload": "200"}},
        ]})
        run = revo.workflows.start("tour", {"from": "client_tour"}, idempotency_key="tour-1")
        for event in revo.workflows.watch(run.id):
            print(f"run {run.id[:8]} #{event.sequence} {event.WhichOneof('event')} "
                  f"{event.step_id}")

        try:
            revo.recall.remember("The tour example stores this fact.", scope="project:tour",
                                 client_id="tour-fact")
            for hit in revo.recall.search("what does the tour store?", scopes=["project:tour"]):
                print(f"recall {hit.score:.2f} {hit.memory.text}")
        except (FailedPrecondition, Unavailable, Unimplemented) as error:  # no embedder or Recall
            print(f"recall skipped: {error.message}")


if __name__ == "__main__":
    main()
