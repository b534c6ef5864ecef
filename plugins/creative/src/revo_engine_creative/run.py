"""One set, from request to summary: :class:`SetRun`.

1. The catalog is read (``ListModels``): which models generate and what they cost; the
   judges are chosen; every planned call's cost is estimated and the sum reserved in the
   caller's budget before any call (:mod:`revo_engine_creative.budget`).
2. ``n + spares`` candidates are generated at once, each with its own strategy
   (:mod:`revo_engine_creative.strategies`), while earlier chosen solutions for similar
   problems are recalled from Perfect Recall and embedded.
3. Each finished candidate is embedded. One too close to a sibling already accepted
   (cosine at or above the threshold) is rejected: if the set still needs it, it is
   regenerated with an instruction to differ (at most ``max_regenerations`` times, the last
   attempt is kept); otherwise a spare takes its place. Once ``n`` are accepted, the spares
   still running are cancelled.
4. Accepted candidates are judged (rubric: each alone, and sent as soon as it is scored;
   pairwise: every pair in both orders, once all are generated) and scored: novelty
   against siblings and history, innovation from quality and novelty.
5. The summary: final scores, Vendi score and mean pairwise cosine, the MMR ranking, cost,
   time; the set is stored for ``Choose``.

Closing the stream (the caller went away, the deadline passed) cancels every call still
running, which closes the model streams, and releases the set's unspent reservation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from google.protobuf import struct_pb2

from mesh.engine import Context
from mesh.errors import FailedPrecondition, InvalidArgument, RpcError, Unavailable
from mesh.runtime.cancel import cancel_and_wait
from mesh.v1 import models_pb2, models_pb2_grpc
from revo_engine_creative import diversity, judging
from revo_engine_creative.ask import Ask
from revo_engine_creative.budget import Prices, SetBudget, no_generating_model
from revo_engine_creative.completion import complete
from revo_engine_creative.diversity import Matrix
from revo_engine_creative.strategies import Strategy, generation_messages, plan, split_rationale
from revo_engine_creative.v1 import creative_pb2 as pb
from revo_engine_recall.v1 import recall_pb2, recall_pb2_grpc

if TYPE_CHECKING:
    from revo_engine_creative.engine import CreativeEngine

__all__ = ["CHOICE_KIND", "SetRun", "innovation"]

log = logging.getLogger(__name__)

CHOICE_KIND = "creative.choice"
"""The ``kind`` metadata of the memories ``Choose`` writes, which history searches for."""
_REGENERATION_WARMTH = 0.15
"""How much hotter each regeneration of a candidate samples."""


def innovation(quality: float, novelty: float, alpha: float, judged: bool) -> float:
    """``quality^(1-alpha) * novelty^alpha`` (a weighted geometric mean: a candidate must
    be both good and new to score high); without a judge, the novelty."""
    if not judged:
        return novelty
    return float(max(0.0, quality) ** (1.0 - alpha) * max(0.0, novelty) ** alpha)


@dataclass
class Draft:
    """One finished generation, embedded."""

    strategy: Strategy
    text: str
    rationale: str
    vector: Matrix
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    regenerations: int


@dataclass
class Accepted:
    index: int
    draft: Draft
    quality: float = 0.0
    verdicts: list[str] = field(default_factory=list)
    judge_prompt_tokens: int = 0
    judge_completion_tokens: int = 0
    judge_cost_usd: float = 0.0
    novelty: float = 1.0


@dataclass
class _Spend:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    model: str = ""

    def add(self, done: models_pb2.Done) -> None:
        self.prompt_tokens += done.usage.prompt_tokens
        self.completion_tokens += done.usage.completion_tokens
        self.cost_usd += done.cost_usd
        self.model = done.model


class SetRun:
    """Generates one set for one caller; :meth:`events` is the Generate stream."""

    def __init__(self, engine: CreativeEngine, ask: Ask, ctx: Context) -> None:
        self.engine, self.ask, self.ctx = engine, ask, ctx
        self.settings = engine.settings
        channel = engine.runtime.channel(ctx)  # as the caller, within the caller's deadline
        self.channel = channel
        self.models = models_pb2_grpc.ModelServiceStub(channel)
        self.recall = recall_pb2_grpc.RecallServiceStub(channel)
        self.budget = SetBudget(engine.budgets, ctx.caller)
        self.prices: Prices | None = None
        self.judges: tuple[str, ...] = ()
        self.accepted: list[Accepted] = []
        self.failures: list[pb.Failure] = []
        self.rejected = 0
        self.history: Matrix = np.zeros((0, 0))
        self.history_task: asyncio.Task[Matrix] | None = None
        """Recalling the history, until a candidate needs it (:meth:`_recalled`)."""
        self.generating: set[asyncio.Task[Any]] = set()
        self.judging: set[asyncio.Task[Any]] = set()
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.drafts_queued = 0
        """Finished generations whose events are not read yet: generation is over only when
        none is running and none is waiting to be read."""
        self.started = time.perf_counter()
        self.generation_ms = 0.0
        self.spend = _Spend()
        self.judge_spend = _Spend()
        self.set_aside: list[Draft] = []
        """Near-duplicates not regenerated because spares were still running."""

    # -- the stream -------------------------------------------------------------------

    async def stream(self) -> AsyncIterator[pb.GenerateResponse]:
        """Candidates as they are scored, then the summary."""
        try:
            await self._prepare()
            async for candidate in self._candidates():
                yield pb.GenerateResponse(candidate=candidate)
            yield pb.GenerateResponse(summary=await self._summary())
        finally:
            await self._close()

    async def _close(self) -> None:
        tasks = [*self.generating, *self.judging,
                 *([self.history_task] if self.history_task is not None else [])]
        await cancel_and_wait(*tasks)
        with contextlib.suppress(RpcError):  # the spend stays reserved until it is settled
            await self.budget.close()

    # -- before any call ----------------------------------------------------------------

    async def _prepare(self) -> None:
        ask = self.ask
        if not self.channel.serves(self.models.Generate):
            raise FailedPrecondition("no node serves revo.models.v1.ModelService, which "
                                     "Creative generates with: enable the models engine "
                                     "(revo up does)")
        catalog = await self.engine.catalog(self.models)
        if not any(m.embeds for m in catalog):
            raise FailedPrecondition("Creative measures novelty with embeddings and the mesh "
                                     "has no embedding model: set models.triton_url to a "
                                     "Triton serving 'embedder' (revo up does)")
        prices = self.prices = Prices.of(catalog, ask.force_local)
        if not prices.models:
            raise no_generating_model(ask.force_local)
        unknown = [m for m in (*ask.models, *ask.judge_models) if m not in prices.models]
        if unknown:
            raise InvalidArgument(
                f"models {', '.join(repr(m[:60]) for m in unknown[:5])} cannot generate "
                f"here{' locally' if ask.force_local else ''}; models that can: "
                f"{', '.join(prices.models)}",
                violations=[("options.models", "names a model that cannot generate")])
        self.judges = (ask.judge_models or (prices.cheapest(ask.models),)
                       if ask.judging != "none" else ())
        count = min(len(ask.perspectives), ask.n + self.settings.spares)
        strategies = plan(count, ask.perspectives, ask.models,
                          self.settings.temperature_min, self.settings.temperature_max)
        estimates = self._estimates(strategies)
        await self.budget.reserve(estimates)
        # The generations all start now: hand their share over at once (one counter update,
        # not one per call, on the way of every call).
        await self.budget.hand_over(sum(estimates[:len(strategies)]))
        self.history_task = asyncio.get_running_loop().create_task(self._history())
        for strategy in strategies:
            self._generate(strategy, handed_over=True)

    def _estimates(self, strategies: list[Strategy]) -> list[float]:
        """Every planned call's estimated cost: the generations, and the judges' calls."""
        assert self.prices is not None
        ask = self.ask
        out = [self.prices.estimate(s.model, self._messages(s), ask.max_tokens)
               for s in strategies]
        sample = "x" * (4 * ask.max_tokens)  # a judged candidate at its longest
        if ask.judging == "rubric":
            messages = judging.rubric_messages(self.settings.rubric, ask.problem,
                                               ask.constraints, sample)
            out += [self.prices.estimate(j, messages, self.settings.judge_max_tokens)
                    for j in self.judges] * ask.n
        elif ask.judging == "pairwise":
            messages = judging.pairwise_messages(self.settings.rubric, ask.problem,
                                                 ask.constraints, sample, sample)
            out += [self.prices.estimate(j, messages, self.settings.judge_max_tokens)
                    for j in self.judges] * (ask.n * (ask.n - 1))
        return out

    def _messages(self, strategy: Strategy, too_close_to: str = "") -> list[tuple[str, str]]:
        ask = self.ask
        return generation_messages(ask.problem, ask.constraints, ask.context, strategy,
                                   too_close_to)

    # -- model calls --------------------------------------------------------------------

    async def _call(self, messages: list[tuple[str, str]], model: str, temperature: float,
                    max_tokens: int, handed_over: bool = False) -> tuple[str, models_pb2.Done]:
        """One streamed generation: its whole text and its final message. Its share of the
        set's reservation is handed over first, unless that was done for it."""
        assert self.prices is not None
        if not handed_over:
            await self.budget.hand_over(self.prices.estimate(model, messages, max_tokens))
        return await complete(self.models, messages, model=model, temperature=temperature,
                              max_tokens=max_tokens, force_local=self.ask.force_local,
                              cost_limit_usd=self.ask.cost_limit_usd)

    async def _embed(self, texts: list[str]) -> Matrix:
        reply = await self.models.Embed(models_pb2.EmbedRequest(texts=texts), timeout=30.0)
        return diversity.unit_rows([list(e.values) for e in reply.embeddings])

    def _spawn(self, into: set[asyncio.Task[Any]], work: Callable[[], Awaitable[Any]],
               kind: str) -> None:
        """Run ``work`` as a task in ``into``; its outcome is queued as an event. The task
        leaves ``into`` before its event is queued, so that whoever reads the event sees
        only the work still running."""
        async def run() -> None:
            me = asyncio.current_task()
            try:
                result = await work()
            except asyncio.CancelledError:
                into.discard(me)  # type: ignore[arg-type]
                # wakes the driver, which may be waiting for this task to end (a spare
                # cancelled as the set filled)
                self._queue(kind + "-cancelled", None)
                raise
            except Exception as error:
                into.discard(me)  # type: ignore[arg-type]
                self._queue(kind + "-failed", error)
            else:
                into.discard(me)  # type: ignore[arg-type]
                self._queue(kind, result)

        task = asyncio.get_running_loop().create_task(run())
        into.add(task)
        task.add_done_callback(into.discard)  # cancelled before it ran

    def _queue(self, kind: str, payload: Any) -> None:
        if kind.startswith("draft"):
            self.drafts_queued += 1
        self.events.put_nowait((kind, payload))

    def _generate(self, strategy: Strategy, too_close_to: str = "",
                  regenerations: int = 0, handed_over: bool = False) -> None:
        async def work() -> Draft:
            try:
                answer, done = await self._call(self._messages(strategy, too_close_to),
                                                 strategy.model, strategy.temperature,
                                                 self.ask.max_tokens, handed_over)
            except RpcError as error:
                error.metadata.setdefault("perspective", strategy.perspective.name)
                raise
            self.spend.add(done)
            solution, rationale = split_rationale(answer)
            if not solution:
                raise Unavailable(f"{done.model or 'the model'} answered with no text",
                                  metadata={"perspective": strategy.perspective.name})
            vector = (await self._embed([solution]))[0]
            return Draft(strategy, solution, rationale, vector, done.model,
                         done.usage.prompt_tokens, done.usage.completion_tokens,
                         done.cost_usd, regenerations)

        self._spawn(self.generating, work, "draft")

    async def _history(self) -> Matrix:
        """Earlier chosen solutions to similar problems in the caller's scopes, embedded;
        none when no node serves Perfect Recall (or none answers right now)."""
        limit = self.settings.history_limit
        if self.ask.skip_history or not limit or not self.channel.serves(self.recall.Search):
            return np.zeros((0, 0))
        scopes = list(self.ask.history_scopes) or [
            recall_pb2.Scope(kind=recall_pb2.SCOPE_KIND_USER)]
        try:
            found = await self.recall.Search(recall_pb2.SearchRequest(
                text=self.ask.problem[:4000], top_k=limit, scopes=scopes,
                min_score=self.settings.history_min_score,
                filters=[recall_pb2.Condition(
                    key="kind", value=struct_pb2.Value(string_value=CHOICE_KIND))],
            ), timeout=30.0)
        except Unavailable as error:
            log.warning("creative: no history for this set: %s", error.message)
            return np.zeros((0, 0))
        solutions = [str(h.memory.metadata["solution"]) for h in found.hits
                     if "solution" in h.memory.metadata]
        if not solutions:
            return np.zeros((0, 0))
        return await self._embed(solutions)

    async def _recalled(self) -> None:
        """Wait for the history (once): novelty needs it before any candidate is sent."""
        if self.history_task is not None:
            task, self.history_task = self.history_task, None
            self.history = await task

    # -- accepting and judging ----------------------------------------------------------

    async def _candidates(self) -> AsyncIterator[pb.Candidate]:
        """Drive the set: accept, regenerate or drop drafts; judge; yield scored ones."""
        ask = self.ask
        while self.generating or self.judging or not self.events.empty():
            kind, payload = await self.events.get()
            if kind.startswith("draft"):
                self.drafts_queued -= 1
            ready: list[Accepted] = []
            if kind == "draft":
                ready += await self._consider(payload)
            elif kind == "draft-failed":
                self._failed(payload)
            elif kind == "judged":
                ready.append(payload)
            elif kind == "judged-failed":  # its calls' failures are verdicts: this is a bug
                raise payload
            if not self.generating and not self.drafts_queued and not self.generation_ms:
                ready += self._generated()
            for accepted in ready:
                yield self._candidate(accepted)
        if ask.judging == "pairwise" and self.accepted:
            await self._judge_pairs()
            for accepted in self.accepted:
                yield self._candidate(accepted)

    def _generated(self) -> list[Accepted]:
        """Generation is over: fill the set from drafts set aside, if it is short, and
        fail it if it has fewer than ``min_candidates``."""
        ask = self.ask
        ready = []
        while len(self.accepted) < ask.n and self.set_aside:
            vectors = [a.draft.vector for a in self.accepted]
            closest = [float(diversity.cosine_matrix(d.vector, np.stack(vectors)).max())
                       if vectors else 0.0 for d in self.set_aside]
            draft = self.set_aside.pop(int(np.argmin(closest)))
            ready += self._accept(draft)
        self.generation_ms = (time.perf_counter() - self.started) * 1000
        if len(self.accepted) < ask.min_candidates:
            raise self._too_few()
        return ready

    def _too_few(self) -> Unavailable:
        causes = "; ".join(f"{f.perspective}: {f.code} {f.message}"
                           for f in self.failures[:8]) or "no candidate succeeded"
        return Unavailable(f"only {len(self.accepted)} of {self.ask.n} candidates could be "
                           f"made, fewer than min_candidates {self.ask.min_candidates}: "
                           f"{causes}", metadata={"accepted": str(len(self.accepted))})

    def _failed(self, error: Exception) -> None:
        code, message = ("INTERNAL", f"{type(error).__name__}: {error}")
        perspective = ""
        if isinstance(error, RpcError):
            code, message = error.code.name, error.message
            perspective = error.metadata.get("perspective", "")
        else:
            log.error("creative: a generation failed unexpectedly", exc_info=error)
        self.failures.append(pb.Failure(index=len(self.failures), perspective=perspective,
                                        code=code, message=message[:500]))

    async def _consider(self, draft: Draft) -> list[Accepted]:
        """Accept ``draft``, or regenerate it or set it aside; returns what can be sent now
        (an accepted draft that needs no judge)."""
        ask = self.ask
        await self._recalled()
        if len(self.accepted) >= ask.n:
            return []  # a spare that finished as the set filled
        closest, similarity = -1, -1.0
        if self.accepted:
            sims = diversity.cosine_matrix(draft.vector,
                                           np.stack([a.draft.vector for a in self.accepted]))[0]
            closest, similarity = int(np.argmax(sims)), float(np.max(sims))
        if similarity >= ask.threshold:
            self.rejected += 1
            self.engine.meters.rejected()
            if ask.n - len(self.accepted) - len(self.generating) <= 0:
                self.set_aside.append(draft)  # a spare still running may take its place
                return []
            if draft.regenerations < self.settings.max_regenerations:
                strategy = draft.strategy
                warmer = Strategy(strategy.perspective,
                                  min(2.0, strategy.temperature + _REGENERATION_WARMTH),
                                  strategy.model)
                self._generate(warmer, self.accepted[closest].draft.text,
                               draft.regenerations + 1)
                return []
        return self._accept(draft)

    def _accept(self, draft: Draft) -> list[Accepted]:
        ask = self.ask
        accepted = Accepted(index=len(self.accepted), draft=draft)
        self.accepted.append(accepted)
        if len(self.accepted) == ask.n:
            for task in list(self.generating):
                task.cancel()  # the spares: their streams close, the router settles
        if ask.judging == "rubric":
            self._spawn(self.judging, lambda: self._judge_alone(accepted), "judged")
            return []
        return [accepted] if ask.judging == "none" else []

    async def _judge_alone(self, accepted: Accepted) -> Accepted:
        """Every judge scores the candidate alone; quality is the mean of their scores."""
        ask = self.ask
        messages = judging.rubric_messages(self.settings.rubric, ask.problem,
                                           ask.constraints, accepted.draft.text)
        results = await asyncio.gather(*[
            self._call(messages, judge, 0.0, self.settings.judge_max_tokens)
            for judge in self.judges], return_exceptions=True)
        scores = []
        for judge, result in zip(self.judges, results, strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                accepted.verdicts.append(f"{judge}: failed: {result}")
                continue
            text, done = result
            self._judged(accepted, done)
            score = judging.parse_score(text)
            accepted.verdicts.append(f"{done.model or judge}: {text.strip()[:1000]}")
            if score is not None:
                scores.append(score)
        accepted.quality = float(np.mean(scores)) if scores else 0.0
        return accepted

    def _judged(self, accepted: Accepted, done: models_pb2.Done) -> None:
        accepted.judge_prompt_tokens += done.usage.prompt_tokens
        accepted.judge_completion_tokens += done.usage.completion_tokens
        accepted.judge_cost_usd += done.cost_usd
        self.judge_spend.add(done)

    async def _judge_pairs(self) -> None:
        """Every judge compares every ordered pair; quality is the share of wins."""
        ask, accepted = self.ask, self.accepted
        pairs = [(a, b) for a in accepted for b in accepted if a is not b]

        async def compare(first: Accepted, second: Accepted, judge: str
                          ) -> tuple[Accepted, Accepted, str, models_pb2.Done]:
            messages = judging.pairwise_messages(self.settings.rubric, ask.problem,
                                                 ask.constraints, first.draft.text,
                                                 second.draft.text)
            text, done = await self._call(messages, judge, 0.0,
                                          self.settings.judge_max_tokens)
            return first, second, text, done

        results = await asyncio.gather(*[compare(a, b, j) for a, b in pairs
                                         for j in self.judges], return_exceptions=True)
        wins = {a.index: 0.0 for a in accepted}
        counted = {a.index: 0 for a in accepted}
        for result in results:
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                continue
            first, second, text, done = result
            half = done.cost_usd / 2  # the comparison's cost, split between the two
            for one in (first, second):
                one.judge_cost_usd += half
            self.judge_spend.add(done)
            first.judge_prompt_tokens += done.usage.prompt_tokens
            first.judge_completion_tokens += done.usage.completion_tokens
            preference = judging.parse_preference(text)
            if preference is None:
                continue
            counted[first.index] += 1
            counted[second.index] += 1
            wins[first.index] += {"A": 1.0, "B": 0.0, "TIE": 0.5}[preference]
            wins[second.index] += {"A": 0.0, "B": 1.0, "TIE": 0.5}[preference]
        for one in accepted:
            total = counted[one.index]
            one.quality = wins[one.index] / total if total else 0.0
            one.verdicts.append(f"won {wins[one.index]:g} of {total} comparisons")

    # -- scores -------------------------------------------------------------------------

    def _against(self, accepted: Accepted) -> Matrix:
        """The vectors ``accepted``'s novelty is measured against: its siblings accepted so
        far and the recalled solutions."""
        others = [a.draft.vector for a in self.accepted if a is not accepted]
        rows = list(others) + (list(self.history) if self.history.size else [])
        return np.stack(rows) if rows else np.zeros((0, 0))

    def _candidate(self, accepted: Accepted) -> pb.Candidate:
        accepted.novelty = diversity.novelty(accepted.draft.vector,
                                             self._against(accepted))
        draft, judged = accepted.draft, self.ask.judging != "none"
        score = innovation(accepted.quality, accepted.novelty, self.settings.novelty_weight,
                           judged)
        self.engine.meters.innovation(score)
        strategy = draft.strategy
        return pb.Candidate(
            index=accepted.index, text=draft.text, rationale=draft.rationale,
            strategy=pb.Strategy(perspective=strategy.perspective.name,
                                 description=strategy.perspective.description,
                                 temperature=strategy.temperature,
                                 requested_model=strategy.model),
            quality=accepted.quality, novelty=accepted.novelty, innovation=score,
            model=draft.model,
            usage=pb.Usage(prompt_tokens=draft.prompt_tokens + accepted.judge_prompt_tokens,
                           completion_tokens=draft.completion_tokens
                           + accepted.judge_completion_tokens),
            cost_usd=draft.cost_usd + accepted.judge_cost_usd,
            regenerations=draft.regenerations, verdicts=accepted.verdicts)

    async def _summary(self) -> pb.Summary:
        ask, accepted = self.ask, self.accepted
        judged = ask.judging != "none"
        scores = []
        for one in accepted:
            final = diversity.novelty(one.draft.vector, self._against(one))
            scores.append(pb.Score(index=one.index, quality=one.quality, novelty=final,
                                   innovation=innovation(one.quality, final,
                                                         self.settings.novelty_weight,
                                                         judged)))
        vectors = np.stack([a.draft.vector for a in accepted])
        ranking = diversity.mmr_ranking([s.innovation for s in scores], vectors,
                                        self.settings.mmr_weight)
        set_id = uuid.uuid4().hex
        total = self.spend.cost_usd + self.judge_spend.cost_usd
        summary = pb.Summary(
            set_id=set_id, vendi_score=diversity.vendi_score(vectors),
            mean_pairwise_cosine=diversity.mean_pairwise_cosine(vectors),
            ranking=[accepted[i].index for i in ranking], scores=scores,
            rejected=self.rejected, failures=self.failures, total_cost_usd=total,
            judge_cost_usd=self.judge_spend.cost_usd,
            usage=pb.Usage(prompt_tokens=self.spend.prompt_tokens
                           + self.judge_spend.prompt_tokens,
                           completion_tokens=self.spend.completion_tokens
                           + self.judge_spend.completion_tokens),
            wall_ms=(time.perf_counter() - self.started) * 1000,
            generation_ms=self.generation_ms,
            history_matches=len(self.history) if self.history.size else 0)
        await self.engine.sets.put(set_id, {
            "owner": self.ctx.caller, "problem": ask.problem,
            "constraints": list(ask.constraints),
            "candidates": [{"index": a.index, "text": a.draft.text,
                            "perspective": a.draft.strategy.perspective.name,
                            "quality": s.quality, "novelty": s.novelty,
                            "innovation": s.innovation, "model": a.draft.model}
                           for a, s in zip(accepted, scores, strict=True)]})
        self.engine.meters.finished(len(accepted), len(self.failures),
                                    summary.wall_ms / 1000)
        return summary
