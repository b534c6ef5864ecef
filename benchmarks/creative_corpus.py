"""The "hivemind" corpus of the creative benchmark: what its simulated model answers.

Five software-engineering problems. For each:

* ``dominant``: one approach, the one a language model gives again and again when asked
  the same question (the "Artificial Hivemind" effect), written as :data:`DOMINANT_PARAPHRASES`
  paraphrases whose wording genuinely varies while the approach stays the same;
* ``approaches``: one distinct approach per perspective of the creative engine's catalog
  (:data:`PERSPECTIVES`), the one that perspective would actually propose, written twice
  (two paraphrases, so that a perspective drawn twice is a paraphrase, not a copy).

Every sentence was written for this benchmark. ``benchmarks/creative.py`` checks with the
real embedder (all-MiniLM-L6-v2) that the dominant paraphrases are close to one another
(cosine mostly 0.8 or more) and the distinct approaches well below, and reports the
distributions in its results.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DOMINANT_PARAPHRASES", "PERSPECTIVES", "PROBLEMS", "Problem", "problem_by_key"]

PERSPECTIVES: tuple[str, ...] = ("pragmatist", "minimalist", "architect", "performance",
                                 "reliability", "security", "contrarian", "analogist", "user",
                                 "data")
"""The names of the creative engine's default perspectives, in its catalog's order."""

DOMINANT_PARAPHRASES = 6


@dataclass(frozen=True)
class Problem:
    """One problem, the approach everybody proposes, and one approach per perspective."""

    key: str
    text: str
    """The question as a user asks it (the naive baseline's whole prompt)."""
    dominant: tuple[str, ...]
    approaches: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Perspective name -> paraphrases of the approach that perspective proposes."""

    def all_answers(self) -> list[tuple[str, str]]:
        """Every (approach, text): ``"dominant"`` or a perspective's name."""
        return [("dominant", t) for t in self.dominant] + [
            (name, t) for name in PERSPECTIVES for t in self.approaches[name]]


LATENCY = Problem(
    key="latency",
    text="Our API's p99 latency doubled after the last release. How should we fix it?",
    dominant=(
        "Profile the slow endpoints to find the bottleneck, which is usually a few expensive "
        "database queries. Add indexes for those queries and cache their results in Redis.",
        "Start by profiling the API to find the bottleneck; it is almost always slow database "
        "queries. Index the columns they filter on and put a Redis cache in front of them.",
        "Profile your endpoints to see where the time goes, most likely in slow database "
        "queries. Then add the missing database indexes and cache the query results in Redis.",
        "Use a profiler on the slow endpoints to locate the bottleneck, typically expensive "
        "database queries. Adding indexes and a Redis cache for those query results should "
        "fix the latency.",
        "First profile the API and identify the slowest database queries behind the "
        "bottleneck. Create indexes for them and cache their results in Redis to bring the "
        "latency back down.",
        "Find the bottleneck by profiling the slow endpoints; expect expensive database "
        "queries. Fix them with proper indexes and a Redis caching layer for the query "
        "results.",
    ),
    approaches={
        "pragmatist": (
            "Roll the release back today so users get the old latency, then bisect the commits "
            "between the two versions in staging under a replayed load test until the change "
            "that doubled the p99 shows up.",
            "Revert to the previous version right away, and find the culprit offline: replay "
            "production traffic in staging against each commit of the release in turn until "
            "one of them reproduces the slowdown.",
        ),
        "minimalist": (
            "Read the release's diff for the one change that added work to every request, such "
            "as a new middleware or an extra call per item, and remove just that. No new "
            "infrastructure is needed to undo a regression.",
            "Look through what the release changed on the request path, find the single piece "
            "that now runs on every call, and take it out or make it lazy. Fixing a regression "
            "should not mean adding a cache or a new service.",
        ),
        "architect": (
            "Move the slow synchronous work out of the request path: the API accepts the job, "
            "puts it on a queue and returns at once, while workers process it. Give each "
            "downstream service an explicit latency budget.",
            "Redesign the endpoint so that heavy work happens asynchronously in background "
            "workers fed by a message queue, and the caller gets an accepted response "
            "immediately. Set a latency budget for every hop in the call chain.",
        ),
        "performance": (
            "Capture flame graphs under production-like load on both releases and compare "
            "allocation rates and garbage-collection pauses. A doubled tail with an unchanged "
            "median usually comes from GC stalls or lock contention, not from slower average "
            "work.",
            "Compare CPU and allocation profiles of the old and new builds under the same load. "
            "When only the tail gets worse, the cause is typically stop-the-world collection "
            "pauses or threads waiting on a contended lock, so look there first.",
        ),
        "reliability": (
            "The tail probably comes from one slow dependency, so put tight timeouts, hedged "
            "requests and circuit breakers on every downstream call. Then alert on the p99 "
            "objective and ship future releases as canaries that roll back automatically.",
            "Protect the API from its slowest dependency with per-call deadlines, a second "
            "hedged request after a short delay, and a breaker that fails fast. Future "
            "releases should go out to a small canary first and revert on an SLO breach.",
        ),
        "security": (
            "Check whether the release made authentication more expensive: a higher password "
            "hashing cost, a new TLS handshake per call, or a token introspection request to "
            "the identity server on every call. Validate signed tokens locally instead.",
            "Security changes are a common hidden cost: see if each request now calls the "
            "authorization server to introspect tokens or renegotiates TLS to a backend. "
            "Verifying JWT signatures locally with cached keys removes that round trip.",
        ),
        "contrarian": (
            "Before fixing anything, check that the regression is real: the new release may "
            "simply measure latency differently, or a few bulk clients may now send huge "
            "payloads. If the median is unchanged, throttling or isolating those clients may be "
            "all that is needed.",
            "Question the number first. A changed metric definition or a handful of customers "
            "sending enormous batches can double a p99 without anything getting slower for "
            "normal users; rate-limit those callers rather than optimising the code.",
        ),
        "analogist": (
            "Think of a supermarket with one open till: a single slow customer holds up the "
            "whole queue. Look for head-of-line blocking in connection pools and thread pools, "
            "and give slow requests their own lane so quick ones are never stuck behind them.",
            "It is like a motorway where one stalled lorry jams every lane. Find the shared "
            "resource where fast requests wait behind slow ones, such as a small connection "
            "pool, and split it so each kind of request has its own lane.",
        ),
        "user": (
            "Find out which user journeys actually feel slower, for example checkout or search, "
            "using real-user monitoring rather than server averages. Fix the requests people "
            "wait on first and show progress indicators while they wait.",
            "Ask support and look at real-user timings to learn which screens customers "
            "experience as slow. Prioritise the interactions they are blocked on, and make the "
            "interface show progress so a long wait is not mistaken for a hang.",
        ),
        "data": (
            "Slice the request traces by endpoint, region, payload size, host and build, and "
            "compare the latency distributions before and after the release. The dimension "
            "that explains the shift tells you where to look.",
            "Export a week of traces and break the p99 down by route, instance, tenant and "
            "response size on either side of the deploy. A simple regression on those features "
            "will show which factor accounts for the doubling.",
        ),
    },
)

FLAKY = Problem(
    key="flaky-tests",
    text="Our integration tests fail randomly, about one CI run in five. What should we do?",
    dominant=(
        "Find the flaky tests by rerunning the suite many times and quarantine them. Then fix "
        "them: replace fixed sleeps with explicit waits and give every test its own isolated "
        "test data.",
        "Rerun the suite repeatedly to detect the flaky tests and quarantine them. Fix each "
        "flaky test by using explicit waits instead of fixed sleeps and by isolating its test "
        "data.",
        "Detect the flaky tests through repeated runs of the suite and quarantine them. Then "
        "replace the fixed sleeps with explicit waits and give each test isolated test data.",
        "Quarantine the flaky tests once repeated reruns of the suite have identified them. "
        "To fix them, replace sleep calls with explicit waits and make each test use isolated "
        "test data.",
        "Identify flaky tests by running the suite many times, then quarantine them. "
        "Replacing hard-coded sleeps with explicit waits and isolating test data between "
        "tests fixes most of them.",
        "Run the suite repeatedly to find which tests are flaky and quarantine those. Then "
        "swap the fixed sleeps for explicit waits, and give each test its own isolated test "
        "data.",
    ),
    approaches={
        "pragmatist": (
            "Record every CI failure with the test name and keep a ranked list of the worst "
            "offenders. Each week one engineer fixes the top entry, and a bot files a ticket "
            "for the test's owner whenever a new one appears.",
            "Keep a league table of failing tests from CI history, and dedicate a few hours "
            "every week to fixing the test at the top. New entries automatically open a ticket "
            "assigned to whoever owns that test.",
        ),
        "minimalist": (
            "Delete the integration tests that duplicate what unit tests already check, and "
            "keep a handful that each exercise one critical path end to end. Fewer tests means "
            "fewer moving parts that can fail at random.",
            "Most integration tests repeat unit-level checks through a slower, more fragile "
            "route. Remove those and keep only a few end-to-end scenarios for the paths that "
            "really matter.",
        ),
        "architect": (
            "Give every test run its own ephemeral environment: containers started for the run "
            "and a private database schema per test. Replace tests that span several services "
            "with consumer-driven contract tests.",
            "Make the tests hermetic: each run spins up its dependencies in fresh containers "
            "and each test gets a schema of its own. Cross-service checks become contract "
            "tests that need no shared environment.",
        ),
        "performance": (
            "Flaky failures are often timeouts on overloaded CI runners. Measure CPU steal and "
            "memory pressure on the runners while the suite runs in parallel, give the "
            "integration jobs dedicated machines, and scale timeouts with measured load.",
            "Check the CI machines: when many jobs share a host, CPU starvation makes "
            "operations miss their deadlines. Monitor runner load during failures and reserve "
            "capacity for the integration stage.",
        ),
        "reliability": (
            "Treat each flaky failure as a real race condition that can also happen in "
            "production. Reproduce it by running the tests with random delays injected and a "
            "shuffled order, then fix the race in the product code rather than the test.",
            "Intermittent failures frequently expose concurrency bugs in the service itself. "
            "Stress the system with injected latency and randomised ordering until the failure "
            "reproduces, and correct the underlying race instead of retrying.",
        ),
        "security": (
            "Check whether the tests share one set of credentials for third-party sandboxes "
            "that get rate-limited or expire mid-run. Issue short-lived per-run secrets from a "
            "vault and stub external services, which also keeps keys out of the CI logs.",
            "Shared API keys for external test accounts are both a leak risk and a source of "
            "throttling. Give each pipeline run its own short-lived credentials and replace "
            "calls to real third parties with local fakes.",
        ),
        "contrarian": (
            "Stop running the integration suite on every commit. Flakiness is a sign of "
            "testing too much at that level; run it nightly and gate merges on fast, "
            "deterministic unit tests instead.",
            "Do not block merges on integration tests at all. Move them to a scheduled nightly "
            "job, where a failure opens a ticket, and let quick unit tests decide whether a "
            "change can land.",
        ),
        "analogist": (
            "Borrow statistical process control from manufacturing: treat each test as a "
            "machine and keep a control chart of its pass rate. Act only when a test drifts "
            "outside its control limits, the way a factory reacts to a process going out of "
            "tolerance.",
            "A factory does not react to every defective part; it watches control charts. "
            "Track each test's pass rate over time with control limits, and investigate only "
            "the tests whose rate leaves its normal band.",
        ),
        "user": (
            "The users here are the developers. Ask them which failures cost them the most "
            "time, then make every failure message say which dependency failed, with the logs "
            "attached and a one-click rerun of just that test.",
            "Survey the engineers who wait on CI about which red builds hurt most. Improve the "
            "failure report so it names the failing service and links its logs, and let them "
            "rerun a single test from the build page.",
        ),
        "data": (
            "Mine the CI history: correlate each failure with the runner host, time of day, "
            "test order and the tests that ran just before. A logistic regression often shows "
            "that failures depend on ordering, which points to state leaking between tests.",
            "Collect months of CI results and model the probability of failure against runner, "
            "hour, parallelism and preceding tests. The strongest predictor tells you whether "
            "the cause is infrastructure, timing or shared state.",
        ),
    },
)

BATCH = Problem(
    key="nightly-batch",
    text="Our nightly batch job now takes nine hours and overruns into the working day. "
         "How can we fix it?",
    dominant=(
        "Split the input into chunks and process them in parallel with several workers. Also "
        "replace row-by-row database writes with bulk inserts.",
        "Parallelise the job: partition the data into chunks that multiple workers process at "
        "the same time, and write to the database with bulk inserts instead of one row at a "
        "time.",
        "Divide the data into chunks processed in parallel by a pool of workers, and use bulk "
        "inserts rather than inserting rows one by one into the database.",
        "Process the input in parallel by splitting it into chunks across multiple workers, "
        "and write to the database with bulk inserts instead of row by row.",
        "Break the job into chunks that several workers can process in parallel, and batch "
        "the database writes into bulk inserts instead of single-row inserts.",
        "Run the job in parallel: chunk the input, hand the chunks to multiple workers, and "
        "replace the per-row database inserts with bulk inserts.",
    ),
    approaches={
        "pragmatist": (
            "Rent a much larger machine for the night and start the job two hours earlier. "
            "That costs little compared with engineering time and buys months while a proper "
            "fix is planned.",
            "Throw hardware at it for now: schedule the job on a bigger instance and move its "
            "start time earlier. A few extra dollars a night are cheaper than weeks of "
            "rewriting.",
        ),
        "minimalist": (
            "Make the job incremental: keep a watermark of the last run and process only the "
            "rows changed since then, using an updated-at column. Most nights only a small "
            "fraction of the data is new.",
            "Stop reprocessing the whole table every night. Record where the previous run "
            "stopped and handle only records modified after that point, which is usually a "
            "tiny share of the total.",
        ),
        "architect": (
            "Replace the nightly batch with a streaming pipeline: capture changes from the "
            "database as they happen and update the results continuously, so there is no "
            "nightly window to overrun.",
            "Move to change data capture feeding a stream processor that keeps the outputs up "
            "to date all day. The batch window disappears because the work is spread over the "
            "day as the data arrives.",
        ),
        "performance": (
            "Measure the time spent in each stage. Such jobs are usually bound by I/O, so push "
            "filters and joins down into the database, remove N+1 query patterns, raise the "
            "fetch size and read columnar files instead of row formats.",
            "Instrument every step and find where the hours go; it is rarely CPU. Let the "
            "database do the joins and filtering, fetch rows in large pages, avoid one query "
            "per record, and store intermediate data in a columnar format.",
        ),
        "reliability": (
            "Make the job restartable from checkpoints and idempotent, so a failure at hour "
            "seven does not mean starting again from zero. Alert when progress falls behind "
            "schedule, and let consumers read the previous results until the new ones are "
            "complete.",
            "The worst nights are the ones where the job crashes late and reruns from scratch. "
            "Add checkpoints after each stage, make every step safe to repeat, and publish "
            "results atomically so readers never see a half-finished state.",
        ),
        "security": (
            "The job reads entire tables, personal data included, with an account that can "
            "read everything. Select only the columns it needs and give it a narrowly scoped "
            "role; reading less sensitive data also means reading less data.",
            "Review what the job touches: it probably copies customer details it never uses. "
            "Restricting it to the required columns under a least-privilege account shrinks "
            "both the exposure and the volume it has to move.",
        ),
        "contrarian": (
            "Ask who actually reads each output of the job. Often half of the reports are "
            "never opened; delete those, and compute the rarely used ones on demand when "
            "somebody asks for them.",
            "Question whether all of this work is needed. Check the access logs of the "
            "generated reports, drop the ones nobody has opened in months, and produce the "
            "rest lazily instead of every night.",
        ),
        "analogist": (
            "Run it like an assembly line: split the job into stages connected by queues so "
            "that while one partition is being transformed the next is already being "
            "extracted and the previous one loaded. Overlapping the stages hides most of the "
            "waiting.",
            "Think of a relay team handing over batons: extraction, transformation and loading "
            "should run as a pipeline, each stage working on a different partition at the same "
            "moment instead of waiting for the whole previous stage to finish.",
        ),
        "user": (
            "Find out what people need when they arrive in the morning. Produce the critical "
            "dashboard first, show when each figure was last refreshed, and let the less "
            "urgent outputs arrive later in the day.",
            "Talk to the morning users: they probably depend on two or three numbers. Reorder "
            "the job so those are ready by eight, label every report with its freshness, and "
            "let the rest finish afterwards.",
        ),
        "data": (
            "Look at how the data is distributed: one large customer may own forty percent of "
            "the rows, making a single partition take most of the night. Split or salt that "
            "hot key so the work is balanced.",
            "Check the data for skew. If a handful of keys account for most records, the "
            "partition holding them dominates the run time; spreading those keys over several "
            "partitions evens out the load.",
        ),
    },
)

SESSIONS = Problem(
    key="lost-work",
    text="Users lose their unsaved work when their session expires. How should we prevent "
         "this?",
    dominant=(
        "Add autosave that stores the user's draft every few seconds, and show a warning "
        "before the session expires with a button to extend the session.",
        "Autosave drafts every few seconds, and warn users shortly before their session "
        "expires, offering a button to extend it.",
        "Implement autosave so drafts are saved every few seconds, and display a warning "
        "before the session expires that lets the user extend the session.",
        "Save the user's draft automatically every few seconds, and pop up a warning a few "
        "minutes before the session expires with an option to extend it.",
        "Use autosave to store drafts every few seconds, plus a session expiry warning with "
        "an extend-session button shown before the timeout.",
        "Autosave the draft at short intervals of a few seconds, and before the session "
        "expires show a warning so the user can extend the session.",
    ),
    approaches={
        "pragmatist": (
            "Make the session timeout sliding, so every keystroke or save request refreshes it, "
            "and lengthen it on the editing pages. That is a configuration change you can ship "
            "today.",
            "Extend the idle timeout for editor pages and renew the session on activity rather "
            "than only at login. It is a small settings change and fixes most cases this "
            "week.",
        ),
        "minimalist": (
            "When a save fails because the session expired, keep the form data in the page, "
            "open the login in a popup, and retry the save once the user is signed in again. "
            "Nothing new needs to be stored anywhere.",
            "Handle the unauthorised response on save: hold on to what was submitted, let the "
            "user re-authenticate in a small window, then resend the same request. The data "
            "never leaves the page, so nothing is lost.",
        ),
        "architect": (
            "Separate authentication from editing: the client refreshes short-lived access "
            "tokens silently in the background, and drafts become versioned documents on the "
            "server, as in collaborative editors, so an expiring session has nothing to lose.",
            "Redesign the model so documents are server-side objects with revision history and "
            "the browser renews its tokens on its own. Editing state then no longer depends on "
            "the lifetime of a login session.",
        ),
        "performance": (
            "Users avoid saving because saving is slow and reloads the page. Make saving "
            "instant by sending small patches optimistically instead of the whole document, so "
            "saving on every change becomes cheap enough to do constantly.",
            "Speed up the save path: send only the diff, apply it without a page reload and "
            "confirm asynchronously. When saving takes milliseconds it can happen on every "
            "edit, and an expiry stops being dangerous.",
        ),
        "reliability": (
            "Treat each save as a durable operation: queue it in the browser's IndexedDB first "
            "and replay it with retries until the server accepts it, including after the user "
            "signs back in. Test it with injected failures.",
            "Write every change to a local durable queue before sending it, and keep retrying "
            "with backoff until the server confirms. An expired session, a network drop or a "
            "restart then only delays the save.",
        ),
        "security": (
            "Longer logins are a risk on shared computers, so keep the short idle timeout. "
            "Encrypt the unsent edits in browser storage with a key bound to the account, "
            "unlock them after a step-up re-authentication, and wipe them on explicit logout.",
            "Treat the unsaved text as sensitive data on a possibly shared machine: keep it "
            "only in encrypted local storage tied to the account, require the person to prove "
            "who they are before it is restored, and erase it at logout.",
        ),
        "contrarian": (
            "Ask why an active user's session expires at all. The timeout probably counts only "
            "server requests and ignores typing, so the real bug is the activity detection, "
            "not a missing autosave.",
            "The session should never expire while somebody is working. If it does, the idle "
            "timer is measuring the wrong thing; fix what counts as activity instead of "
            "building recovery features around a faulty timer.",
        ),
        "analogist": (
            "Do what a hotel does with luggage after checkout: accept the submission even "
            "though the session has ended, park it in a holding area keyed to the user, and "
            "apply it as soon as they sign in again.",
            "Like a cloakroom that keeps your coat after closing time, the server can hold a "
            "request that arrives with an expired session in a pending area, and complete it "
            "when the same user logs back in.",
        ),
        "user": (
            "Interview the users who lost work: they probably write long answers in one "
            "sitting. Show a clear saved or unsaved status, and split long forms into short "
            "steps that are each saved when completed.",
            "Watch how people use the form: long uninterrupted writing is the risky pattern. "
            "Redesign it into smaller steps that save as you go, and make the save state "
            "visible at all times.",
        ),
        "data": (
            "Measure it first: count the failed saves caused by expired sessions per page, and "
            "the distribution of time between opening a page and submitting it. Set the "
            "timeout from that distribution, for example its 99th percentile.",
            "Pull the logs to see how often saves fail on expiry and how long real editing "
            "sessions last. Choose the timeout so that nearly all observed editing durations "
            "fit inside it.",
        ),
    },
)

DEPLOYS = Problem(
    key="slow-deploys",
    text="Deploying our monolith takes two hours and often fails, so we only release once a "
         "month. What should we change?",
    dominant=(
        "Set up a CI/CD pipeline that builds, tests and deploys automatically on every merge, "
        "and package the application in Docker containers so every environment is identical.",
        "Automate the release with a CI/CD pipeline: each merge is built, tested and deployed "
        "automatically. Containerising the app with Docker keeps the environments identical.",
        "Introduce a CI/CD pipeline so every merge is automatically built, tested and "
        "deployed, and containerise the monolith with Docker so all environments are the "
        "same.",
        "Build a CI/CD pipeline that tests and deploys each merge automatically, and package "
        "the application as Docker containers to make every environment identical.",
        "Automate deployment with a CI/CD pipeline triggered on every merge to build, test "
        "and deploy, and run the application in Docker containers for identical environments.",
        "Move the deploy into an automated CI/CD pipeline that builds, tests and deploys on "
        "each merge, with the application packaged in Docker containers so environments "
        "match.",
    ),
    approaches={
        "pragmatist": (
            "Write down every manual step of the current deploy as a checklist and time each "
            "one. Script the two slowest and most error-prone steps first, and repeat until "
            "the checklist is short.",
            "Document today's release procedure step by step with how long each takes and how "
            "often it goes wrong. Automate the worst couple of steps this sprint and keep "
            "chipping away at the list.",
        ),
        "minimalist": (
            "Release smaller batches more often with the tools you already have. Big releases "
            "fail because they carry a month of changes; shipping whatever is merged every "
            "week makes each deploy small and easy to debug.",
            "The failures come from batch size, not tooling. Deploy weekly, even with the "
            "current process, so each release contains a few changes and any problem is easy "
            "to trace.",
        ),
        "architect": (
            "Carve the parts of the monolith that change most often into separately deployable "
            "services with their own pipelines. Most releases then touch a small service "
            "instead of redeploying the whole application.",
            "Split the monolith along its most frequently changed boundaries into modules that "
            "deploy independently. Teams can then release their piece without coordinating a "
            "two-hour deployment of everything.",
        ),
        "performance": (
            "Find where the two hours go: usually building, testing and migrating. Cache build "
            "artifacts, shard the test suite across machines, and make schema migrations "
            "online with expand and contract so the deploy never waits on them.",
            "Profile the deployment itself. Incremental builds with a shared cache, tests run "
            "in parallel shards and database migrations that run online ahead of the release "
            "can cut the time from hours to minutes.",
        ),
        "reliability": (
            "Use blue-green deployments: bring up the new version beside the old, check its "
            "health automatically, and switch traffic over, with an instant switch back if "
            "anything looks wrong. A failed deploy then costs seconds.",
            "Make failure cheap rather than rare: deploy to a parallel environment, shift a "
            "small share of traffic as a canary, watch the health checks and roll back "
            "automatically when they degrade.",
        ),
        "security": (
            "Many failures come from people logging into production servers with shared "
            "accounts and changing things by hand. Remove that access, sign the build "
            "artifacts, and deploy only from a pipeline with least-privilege credentials and "
            "an audit trail.",
            "Stop manual changes on production machines: revoke shared SSH access, let only a "
            "locked-down pipeline deploy signed artifacts, and log every deployment, which "
            "also removes the configuration drift that breaks releases.",
        ),
        "contrarian": (
            "A monthly release may be exactly what your customers want, for instance if they "
            "are regulated or run on premises. Keep the cadence, but add a release branch "
            "with a stabilisation week so the monthly deploy stops failing.",
            "Releasing rarely is not necessarily the problem. If customers prefer predictable "
            "monthly updates, invest in a release train with a frozen branch and a proper "
            "hardening period instead of deploying more often.",
        ),
        "analogist": (
            "Treat deploys like a Formula 1 pit stop: rehearse them repeatedly in a staging "
            "environment, with each person owning one task, until the routine is fast and "
            "boring. Regular game days keep the skill sharp.",
            "Pit crews get fast by practising, not by buying tools. Run the deployment as a "
            "drill in staging every week with clear roles, measure each run, and improve the "
            "routine until it is uneventful.",
        ),
        "user": (
            "A monthly cadence makes users wait weeks for fixes. Ship features dark behind "
            "flags, let a group of beta users turn them on early, and collect their feedback "
            "before everyone gets the change.",
            "Think about what customers experience: long waits for bug fixes and big-bang "
            "changes. Feature flags and an opt-in beta group let them get improvements sooner "
            "and tell you what works.",
        ),
        "data": (
            "Measure the four delivery metrics, lead time, deploy frequency, change failure "
            "rate and time to restore, and classify the causes of the last twelve failed "
            "deploys. Fix the most common category first.",
            "Go through the history of failed releases and tag each with its root cause. The "
            "distribution of causes, tracked alongside lead time and failure rate, shows which "
            "single fix would help most.",
        ),
    },
)

PROBLEMS: tuple[Problem, ...] = (LATENCY, FLAKY, BATCH, SESSIONS, DEPLOYS)


def problem_by_key(key: str) -> Problem:
    """The problem named ``key``; KeyError names the known keys."""
    for problem in PROBLEMS:
        if problem.key == key:
            return problem
    raise KeyError(f"no problem {key!r}: known {[p.key for p in PROBLEMS]}")
