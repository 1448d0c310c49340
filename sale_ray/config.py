"""Pydantic models for every configuration boundary, and the embedded default.

One YAML file (``--config``) maps onto :class:`SaleConfig`; every field has a description and a
default, so an empty file is a valid config (it means: the embedded local pool). Unknown keys are
errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError
from .memory.config import MemoryConfig, StorageConfig
from .service.config import ServiceConfig
from .tracing import TracingConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResourceSpec(_Strict):
    """Ray resources an agent's actor pins. Local CPU agents default to none so that three
    agents fit on a 2-core machine; on a GPU cluster set ``num_gpus: 1``; for a hosted API use a
    custom quota resource (e.g. ``{quota_openai: 1}``) that the cluster declares."""

    num_cpus: float = Field(default=0.0, ge=0, description="CPUs reserved for the agent actor.")
    num_gpus: float = Field(default=0.0, ge=0, description="GPUs reserved (vLLM / GPU agents).")
    custom: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources, e.g. an API quota token."
    )


class QuotaSpec(_Strict):
    """An agent's rate limits and money, enforced by the auctioneer across all its auctions.

    ``None`` means unlimited. A call that would overdraw the budget is refused before it is made
    (reserve, then settle): the agent is excluded from that auction with a recorded reason."""

    rpm: float | None = Field(default=None, gt=0, description="Requests per minute.")
    tpm: float | None = Field(default=None, gt=0, description="Tokens (in + out) per minute.")
    budget_usd: float | None = Field(default=None, ge=0, description="$ this agent may spend.")


class ScriptedSpec(_Strict):
    """Behaviour of a ``backend: scripted`` agent: a load-test tool, never the product default.
    Its answers are canned; its latency, failures and token counts are what is configured."""

    latency_ms: tuple[float, float] = Field(
        default=(0.0, 0.0), description="Uniform [lo, hi] simulated latency per call, in ms."
    )
    plan_tokens: int = Field(default=40, ge=1, description="Completion tokens of a bid.")
    quality: float = Field(
        default=0.5, ge=0, le=1, description="Share of tasks its execution passes."
    )
    fail_rate: float = Field(default=0.0, ge=0, le=1, description="Share of calls that raise.")
    hang: bool = Field(default=False, description="Never answer (deadline tests).")
    seed: int = Field(default=0, description="Makes latencies and outcomes reproducible.")


class AgentSpec(_Strict):
    """One agent of the pool: which model, where it is served, what it costs."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$", description="Unique name.")
    backend: Literal["local", "openai", "scripted"] = Field(
        default="local",
        description="'local': a GGUF from the catalog served by xllamacpp inside the agent's "
        "actor. 'openai': any OpenAI-compatible endpoint (vLLM, hosted APIs) at base_url. "
        "'scripted': canned answers with simulated latency (load and fault tests only).",
    )
    model: str = Field(description="Catalog name (local) or the endpoint's model id (openai).")
    base_url: str | None = Field(default=None, description="OpenAI-compatible base URL (…/v1).")
    api_key_env: str | None = Field(
        default=None, description="Name of the env var holding the API key (never the key)."
    )
    price_in_per_mtok: float | None = Field(
        default=None, ge=0, description="$ per million prompt tokens (local default: catalog)."
    )
    price_out_per_mtok: float | None = Field(
        default=None, ge=0, description="$ per million completion tokens (local default: catalog)."
    )
    price_cached_in_per_mtok: float | None = Field(
        default=None,
        ge=0,
        description="$ per million prompt tokens the server's prefix cache served (reported as "
        "`usage.prompt_tokens_details.cached_tokens` by llama.cpp, vLLM and OpenAI-style APIs, "
        "which bill them at a discount). None = the prompt price (no discount).",
    )
    max_concurrency: int = Field(default=2, ge=1, le=1024, description="Calls in flight at once.")
    n_ctx: int = Field(default=4096, ge=512, description="Context length of a local server.")
    threads: int | None = Field(default=None, ge=1, description="CPU threads of a local server.")
    resources: ResourceSpec = Field(
        default_factory=ResourceSpec, description="Ray resources the agent's actor pins."
    )
    quota: QuotaSpec = Field(
        default_factory=QuotaSpec, description="RPM / TPM / budget, enforced by the auctioneer."
    )
    scripted: ScriptedSpec = Field(
        default_factory=ScriptedSpec, description="Only read by backend 'scripted'."
    )

    @model_validator(mode="after")
    def _check_backend(self) -> AgentSpec:
        if self.backend == "openai" and not self.base_url:
            raise ValueError(f"agent {self.name!r}: backend 'openai' needs base_url")
        return self


class PoolSpec(_Strict):
    """The agents that bid. Order does not matter; price decides who is 'cheaper'."""

    agents: list[AgentSpec] = Field(min_length=1, description="At least one agent.")

    @model_validator(mode="after")
    def _unique_names(self) -> PoolSpec:
        names = [a.name for a in self.agents]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"agent names must be unique; repeated: {dupes}")
        return self


class Weights(_Strict):
    """Weights of the auction score ``C - V`` (SALE.md steps 2-3).

    ``C = w_c * price_out_per_mtok * plan_tokens`` and
    ``V = w_h * H + sum_j w_jury[j] * gamma_j``, with ``H`` the plan's normalised mean entropy in
    [0, 1] and ``gamma_j`` juror j's 0-5 score. Defaults (until ``fit_weights`` replaces them):
    ``w_c = 0.01`` makes a 100-token plan of a 0.30 $/Mtok agent cost 0.3 score points;
    ``w_h = -1`` makes a fully uncertain plan lose one point; jurors not listed in ``w_jury``
    get ``w_jury_default`` (0.2 each, so three jurors' mean score counts with weight ~0.6).
    """

    w_c: float = Field(default=0.01, description="Weight of price x plan length.")
    w_h: float = Field(default=-1.0, description="Weight of plan entropy (negative: doubt costs).")
    w_jury: dict[str, float] = Field(default_factory=dict, description="Per-juror weights.")
    w_jury_default: float = Field(default=0.2, description="Weight of a juror not in w_jury.")

    def juror_weight(self, juror: str) -> float:
        return self.w_jury.get(juror, self.w_jury_default)


class AnswerTrust(_Strict):
    """How far one agent's direct answer is trusted, by what its own check said (``bid: answer``).

    Each figure is the probability that such an answer is correct, as outcome memory measured
    it (``sale-ray eval`` fits them on the training split: passed / failed / unchecked answers
    of this agent that the hidden tests then passed). The check is the answer's own run of the
    prompt's examples for code; for answer tasks, its mean token entropy against
    ``entropy_max``. An answer that could not be checked (no examples in the prompt, no
    ``entropy_max``) is ``unchecked``.
    """

    passed: float = Field(default=0.9, ge=0, le=1, description="P(correct | its check passed).")
    failed: float = Field(default=0.05, ge=0, le=1, description="P(correct | its check failed).")
    unchecked: float = Field(
        default=0.5, ge=0, le=1, description="P(correct | nothing to check it with)."
    )
    entropy_max: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Answer tasks: a mean token entropy at or below this passes the check, above "
        "fails it. None: answer tasks are unchecked.",
    )
    overall: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="P(correct) of this agent's answers whatever the check said: the base rate "
        "that outcome memory of similar tasks (`answer_memory_k`) moves an answer's value away "
        "from. None: memory does not move it.",
    )
    kinds: dict[Literal["code", "answer"], AnswerTrust] = Field(
        default_factory=dict,
        description="Figures for one task kind that replace these (an agent trusted on code "
        "need not be on answers).",
    )

    def for_kind(self, kind: str) -> AnswerTrust:
        """The figures for tasks of ``kind``: its own when fitted, else these."""
        return self.kinds.get(kind, self)  # type: ignore[call-overload]


class AuctionConfig(_Strict):
    """How an auction runs."""

    bid: Literal["plan", "answer"] = Field(
        default="plan",
        description="What a bid is. `plan`: SALE as published (every agent writes a short plan, "
        "the jury scores them, the winner executes its plan). `answer`: the bid is the agent's "
        "direct answer, asked cheapest first (`answer_agents`); the first one whose value "
        "(`answer_trust` for what its own check said) reaches `accept_value` wins and is not "
        "redone, so dearer agents are asked only while the outcome is open (docs/economics.md). "
        "With `answer` the plan settings (weights, jury, jurors, reserve, escalation, "
        "speculation) and memory refinement do not apply.",
    )
    answer_agents: list[str] | None = Field(
        default=None,
        min_length=1,
        description="`bid: answer`: the agents asked, cheapest first (None = every agent). The "
        "dearest listed always answers when nobody before it was accepted.",
    )
    answer_trust: dict[str, AnswerTrust] = Field(
        default_factory=dict,
        description="`bid: answer`: per agent, P(correct) of its answer by check outcome (an "
        "agent not listed gets the `AnswerTrust` defaults). Fitted by `sale-ray eval`.",
    )
    deadline_s: float | None = Field(
        default=None,
        gt=0,
        description="`bid: answer`: seconds for the auction as a whole. No agent is asked once "
        "it has passed, and each call gets only what is left (the first gets all of it, capped "
        "by `execute_timeout_s`); the best answer so far stands. None = no deadline.",
    )
    answer_memory_k: int = Field(
        default=0,
        ge=0,
        le=64,
        description="`bid: answer`: how many of the most similar past auctions in memory value "
        "an answer, by how each agent's answers did on them (docs/economics.md, 'Outcome "
        "memory'). 0 = off: an answer is worth its agent's `answer_trust` figure alone. Needs "
        "`memory.enabled` and auctions with a verifier to learn from; with an auction's "
        "verifier, every asked answer is judged so memory records each agent's outcome.",
    )
    accept_value: float = Field(
        default=0.8,
        ge=0,
        le=1,
        description="`bid: answer`: an answer whose trust reaches this wins at once. An agent "
        "whose answer could not reach it on this task (e.g. nothing to check it with) is "
        "skipped, unless it is the last one.",
    )

    weights: Weights = Field(default_factory=Weights, description="Weights of C - V.")
    plan_max_tokens: int = Field(default=96, ge=8, le=1024, description="Cap on a bid's plan.")
    top_logprobs: int = Field(default=5, ge=1, le=20, description="k for entropy (top-k).")
    jury: bool = Field(default=True, description="Run the jury (one call per juror).")
    screen_directives: bool = Field(
        default=True,
        description="Jurors and refiners see plans, tasks and past tasks with every sentence "
        "addressed to the reviewer (a rating request, an order to ignore the instructions, a "
        "prompt role, a ready-made verdict) replaced by a marker (agents/screen.py); plans "
        "stay as written for execution and the record lists what was removed.",
    )
    jury_max_plan_chars: int = Field(
        default=1200,
        ge=100,
        description="Plans are cut to this many chars before the jury sees them.",
    )
    bid_timeout_s: float = Field(default=120.0, gt=0, description="Deadline for all bids.")
    jury_timeout_s: float = Field(default=120.0, gt=0, description="Deadline for all jurors.")
    execute_timeout_s: float = Field(default=300.0, gt=0, description="Deadline for execution.")
    temperature: float = Field(default=0.0, ge=0, le=2, description="Sampling temperature.")
    reserve_agent: str | None = Field(
        default=None,
        description="An agent that does not bid (usually the largest): it plans and executes "
        "only when no bid's C - V is at or below `reserve_score`, so its plan is paid only when "
        "it runs. None = every agent bids (the paper). `jobs/fit_weights.py --policy lean` fits it.",
    )
    reserve_score: float = Field(
        default=0.0, description="The reserve agent's C - V: bids must score at or below it to win."
    )
    jurors: list[str] | None = Field(
        default=None,
        description="Agents asked to judge (None = every agent). A juror whose fitted weight "
        "is 0 earns nothing: leave it out and its tokens are saved.",
    )
    escalate_on_failed_check: bool = Field(
        default=False,
        description="Code tasks: when the winner's answer is not confirmed by its own run of the "
        "prompt's examples (failed, errored, or none to run), the reserve agent (else the "
        "next-ranked dearer bidder) executes it instead, once. Measured as `sale_lean_verify`.",
    )
    speculate: bool = Field(
        default=False,
        description="Start the favourite's execution as soon as the bids are in (the bid that "
        "wins on entropy and price alone), while the jury and refinement decide: kept when it "
        "wins, else run to the end beside the winner's and paid (`speculation` on the record). "
        "Saves the execution's wait when the favourite wins; costs one execution when not.",
    )


ToolName = Literal["python", "calculator"]


class ExecutionConfig(_Strict):
    """How the winner executes: one completion plus self-check fix turns (``max_turns: 1``),
    or a bounded tool loop (``max_turns`` > 1, docs/agent_loop.md)."""

    max_tokens: int = Field(default=512, ge=16, le=32768, description="Cap per generation turn.")
    self_check_turns: int = Field(
        default=1,
        ge=0,
        le=10,
        description="With `max_turns: 1`: fix turns after running the prompt's own examples.",
    )
    max_turns: int = Field(
        default=1,
        ge=1,
        le=50,
        description="Model turns of the agent loop. 1 = no loop (one completion, then "
        "`self_check_turns`); more = write, run a tool, read its output, fix, submit.",
    )
    max_tokens_total: int = Field(
        default=8192,
        ge=64,
        le=10_000_000,
        description="The loop's budget in tokens, prompt and completion of every turn together. "
        "No turn starts with fewer than 64 left, and a turn's completion is capped to what is "
        "left; its prompt may pass the budget by that one prompt.",
    )
    tools: list[ToolName] = Field(
        default_factory=lambda: ["python"],
        min_length=1,
        description="Tools the loop offers, called by a fenced block named after the tool: "
        "`python` (the sandbox, with the task's examples on code tasks), `calculator`.",
    )
    tool_timeout_s: float = Field(
        default=30.0, gt=0, le=600, description="Wall-clock limit of one tool call in the loop."
    )
    max_tool_output_chars: int = Field(
        default=2000,
        ge=100,
        le=100_000,
        description="Tool output fed back to the model, head and tail kept (as data).",
    )
    auto_submit: bool = Field(
        default=True,
        description="Submit without another turn when a run settles it: a code block that runs "
        "and passes the task's examples, an answer program that prints one line.",
    )
    max_transcript_chars: int = Field(
        default=4000,
        ge=100,
        le=1_000_000,
        description="Each turn's text kept in the record and the Parquet log.",
    )


# Isolation layers a config may require (see sale_ray/evaluators/isolation.py).
SandboxLayer = Literal["netns", "pidns", "mountns", "uid", "cgroup"]


class SandboxConfig(_Strict):
    """Limits for running generated code (see README 'Sandbox')."""

    timeout_s: float = Field(default=10.0, gt=0, le=600, description="Wall-clock limit.")
    cpu_s: int = Field(default=10, ge=1, description="CPU-seconds limit (RLIMIT_CPU).")
    memory_mb: int = Field(default=512, ge=32, description="Address-space limit (RLIMIT_AS).")
    max_processes: int = Field(default=16, ge=1, description="Process limit (RLIMIT_NPROC).")
    max_output_bytes: int = Field(default=65536, ge=1024, description="stdout+stderr kept.")
    max_file_mb: int = Field(default=16, ge=1, description="Largest file it may write.")
    tmp_mb: int = Field(default=64, ge=1, le=4096, description="Size of the private /tmp (tmpfs).")
    shm_mb: int = Field(
        default=16, ge=1, le=4096, description="Size of the private /dev/shm (tmpfs, i.e. RAM)."
    )
    run_memory_mb: int = Field(
        default=1024,
        ge=32,
        description="Memory of all processes of one run together (its cgroup, where the kernel "
        "lets sale-ray create one; `memory_mb` bounds each process).",
    )
    require: list[SandboxLayer] = Field(
        default_factory=list,
        description="Isolation layers that must be present: when one is missing, untrusted code "
        "is refused (SandboxRefused names the layer and the fix). See docs/sandbox.md.",
    )
    warn: list[SandboxLayer] = Field(
        default_factory=lambda: ["netns", "pidns", "mountns"],
        description="Layers whose absence is logged (once per process) but accepted.",
    )
    serve_require: list[SandboxLayer] = Field(
        default_factory=lambda: ["netns"],
        description="Added to `require` by the Serve door (/v1/tasks runs callers' tests).",
    )
    broker: bool = Field(
        default=True,
        description="With Ray up, start sandboxes from the `sale-ray-sandbox` actor (no secrets "
        "in its environment, not a child of any agent) instead of the calling process.",
    )
    broker_concurrency: int = Field(
        default=8, ge=1, le=256, description="Sandbox runs the broker actor starts at once."
    )

    def for_serve(self) -> SandboxConfig:
        """This config as the Serve door uses it: ``require`` plus ``serve_require``."""
        merged = list(dict.fromkeys([*self.require, *self.serve_require]))
        return self.model_copy(update={"require": merged})


class AuctioneerConfig(_Strict):
    """The auctioneer: how many auctions run at once, how many may wait, and the run's money."""

    max_in_flight: int = Field(default=64, ge=1, le=100_000, description="Auctions at once.")
    max_queued: int = Field(
        default=10_000, ge=0, description="Admitted auctions waiting for a slot; past it: refused."
    )
    budget_usd: float | None = Field(
        default=None, ge=0, description="$ the whole run may spend (None = unlimited)."
    )
    max_batch: int = Field(
        default=256, ge=1, le=10_000, description="Calls coalesced into one Ray call per agent."
    )
    batches_in_flight: int = Field(
        default=4, ge=1, le=64, description="Ray calls in flight per agent (pipelining depth)."
    )
    batch_wait_ms: float = Field(
        default=5.0,
        ge=0,
        le=10_000,
        description="Longest a call waits behind full pipelining slots before it goes out anyway "
        "(a batch holds its slot until its slowest call ends).",
    )
    remember: int = Field(
        default=200_000, ge=1, description="Finished records kept for idempotent resubmits."
    )
    evaluate_concurrency: int = Field(
        default=2, ge=1, description="Verifier runs (sandboxed tests) at once."
    )


class CacheConfig(_Strict):
    """Content-addressed response cache (:mod:`sale_ray.cache`): a rerun at temperature 0 costs
    nothing. Keys are (model identity, request parameters, messages); entries are Parquet files."""

    enabled: bool = Field(default=False, description="Serve repeated model calls from the cache.")
    path: str = Field(
        default="~/.cache/sale-ray/responses", description="Folder of the cache's Parquet files."
    )
    deterministic_only: bool = Field(
        default=True,
        description="Only cache calls at temperature 0 (a sampled answer replayed is not a sample).",
    )
    flush_every: int = Field(
        default=16, ge=1, description="New entries buffered before a Parquet segment is written."
    )


class EvalConfig(_Strict):
    """``sale-ray eval``: splits, the cost/quality trade-off and the fit (see docs/evaluation.md)."""

    train_fraction: float = Field(
        default=0.5, gt=0, lt=1, description="Share of each bin's tasks in the training split."
    )
    seed: int = Field(default=0, description="Seed of the train/test split and the random router.")
    cost_lambda: float = Field(
        default=0.1,
        ge=0,
        description="Loss = fail + cost_lambda * execution cost / largest agent's mean cost: "
        "what every fitted router (SALE weights, kNN) minimises on the training split.",
    )
    memory_folds: int = Field(
        default=5,
        ge=0,
        description="Cross-validation folds (of the training split) that decide whether the "
        "recommended configuration may read outcome memory: the whole fit, with memory among "
        "its candidates and without, is scored on tasks it did not see (0 or 1: the lowest "
        "training loss decides).",
    )
    knn_k: int = Field(default=0, ge=0, description="kNN neighbours (0 = choose by leave-one-out).")
    embedder: str = Field(default="minilm", description="Task-text embedder of the kNN router.")
    objective: Literal["bins", "tasks", "mean"] = Field(
        default="bins",
        description="Weight fit: 'bins' = worst complexity bin blended with the mean (default); "
        "'tasks' = the paper's worst case over tasks; 'mean' = average loss.",
    )
    minmax_alpha: float = Field(
        default=0.5, ge=0, le=1, description="Share of the worst case in the blended objective."
    )
    weight_bound: float = Field(default=10.0, gt=0, description="|w| bound in the weight fit.")
    big_m: float = Field(default=1e4, gt=0, description="Big-M of the winner constraints.")
    fit_time_limit_s: float = Field(default=120.0, gt=0, description="HiGHS time limit.")
    task_concurrency: int = Field(
        default=1, ge=1, description="Tasks whose matrix cells are computed at once."
    )


#: The auction settings a serve policy may change (the rest must match what the agents run).
POLICY_FIELDS = (
    "bid",
    "answer_agents",
    "answer_trust",
    "accept_value",
    "answer_memory_k",
    "weights",
    "jury",
    "reserve_agent",
    "reserve_score",
    "jurors",
    "escalate_on_failed_check",
    "speculate",
)


class ServePolicy(_Strict):
    """A named auction policy of the online endpoint, chosen by model name ``sale:<name>``.

    ``auction`` overrides the settings in :data:`POLICY_FIELDS` of the deployment's own
    ``auction:``; ``config`` names a sale-ray YAML (absolute path, e.g. the ``lean_verify.yaml``
    that ``sale-ray eval`` writes) whose ``auction:`` settings of those fields are taken first.
    """

    description: str = Field(default="", description="Shown by GET /v1/models.")
    config: str | None = Field(
        default=None, description="A sale-ray YAML whose auction policy fields are taken."
    )
    auction: dict[str, Any] = Field(
        default_factory=dict, description=f"Overrides of auction.{{{', '.join(POLICY_FIELDS)}}}."
    )

    @model_validator(mode="after")
    def _policy_fields_only(self) -> ServePolicy:
        bad = sorted(set(self.auction) - set(POLICY_FIELDS))
        if bad:
            raise ValueError(f"auction: {bad} are not policy settings; allowed: {POLICY_FIELDS}")
        return self


class ServeConfig(_Strict):
    """The online endpoint (``sale-ray serve``, ``cluster/serve.yaml``; see docs/serve.md).

    API keys are never in this file: name the environment variable or the file that holds them
    (one key per line; ``#`` starts a comment). Overload answers ``overload_status`` with
    ``Retry-After``; a request past ``request_timeout_s`` answers 408 and cancels its model calls.
    """

    host: str = Field(default="127.0.0.1", description="Bind address (loopback by default).")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port of Serve's proxy.")
    require_auth: bool = Field(
        default=True, description="Refuse requests without a valid bearer key (not /healthz)."
    )
    api_keys_env: str | None = Field(
        default="SALE_RAY_API_KEYS",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Env var holding comma-separated API keys (its name, never a key).",
    )
    api_keys_file: str | None = Field(
        default=None, description="File with one API key per line (e.g. a mounted secret)."
    )
    max_body_bytes: int = Field(
        default=1_000_000, ge=1024, description="Larger request bodies answer 413."
    )
    max_prompt_chars: int = Field(
        default=32_000, ge=1, description="Characters of all messages together; more is 422."
    )
    max_messages: int = Field(default=256, ge=1, description="Messages per chat request.")
    max_conversation_tokens: int = Field(
        default=2048,
        ge=16,
        le=32_000,
        description="Model `sale`: tokens of the rendered conversation every bid, juror and the "
        "winner read (estimated as quotas do: characters / 3); more is a 400.",
    )
    policies: dict[str, ServePolicy] = Field(
        default_factory=dict,
        description="Named policies `sale:<name>` beside the built-in lean, lean_verify and "
        "published (a name here replaces a built-in).",
    )
    max_ongoing_requests: int = Field(
        default=16, ge=1, description="Requests one replica works on at once (Serve)."
    )
    max_queued_requests: int = Field(
        default=64, ge=0, description="Requests waiting for a replica; past it: overload_status."
    )
    overload_status: Literal[503, 429] = Field(
        default=503, description="Status when the queue is full (Serve backpressure)."
    )
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After sent with overload.")
    request_timeout_s: float = Field(
        default=300.0, gt=0, description="Deadline of one request; past it: 408, calls cancelled."
    )
    max_records: int = Field(
        default=1000,
        ge=1,
        description="No effect any more (kept so older configs load): records are kept by the "
        "service, in memory (auctioneer.remember) and in its log (service.log_uri).",
    )
    num_replicas: int = Field(
        default=1, ge=1, description="Gateway replicas (each starts its pool)."
    )
    num_cpus: float = Field(default=0.0, ge=0, description="CPUs reserved per gateway replica.")


class SaleConfig(_Strict):
    """The whole configuration of a run (YAML file = this model)."""

    pool: PoolSpec = Field(
        default_factory=lambda: default_pool(), description="The agents (default: local pool)."
    )
    auction: AuctionConfig = Field(default_factory=AuctionConfig, description="Auction rules.")
    execution: ExecutionConfig = Field(
        default_factory=ExecutionConfig, description="How the winner executes."
    )
    sandbox: SandboxConfig = Field(
        default_factory=SandboxConfig, description="Limits for running generated code."
    )
    auctioneer: AuctioneerConfig = Field(
        default_factory=AuctioneerConfig, description="Admission, batching and the run budget."
    )
    cache: CacheConfig = Field(
        default_factory=CacheConfig, description="Response cache (temperature-0 reruns are free)."
    )
    eval: EvalConfig = Field(default_factory=EvalConfig, description="`sale-ray eval` settings.")
    serve: ServeConfig = Field(
        default_factory=ServeConfig, description="The online endpoint (`sale-ray serve`)."
    )
    memory: MemoryConfig = Field(
        default_factory=MemoryConfig, description="Auction memory and refinement (SALE step 6)."
    )
    storage: StorageConfig = Field(
        default_factory=StorageConfig, description="Where memory snapshots go (S3 or a folder)."
    )
    service: ServiceConfig = Field(
        default_factory=ServiceConfig,
        description="The shared service doors attach to (`sale-ray up`), its ledger and log.",
    )
    tracing: TracingConfig = Field(
        default_factory=TracingConfig,
        description="OpenTelemetry spans per auction and phase (docs/tracing.md).",
    )

    @model_validator(mode="after")
    def _known_agents(self) -> SaleConfig:
        names = {a.name for a in self.pool.agents}
        a = self.auction
        named = ([a.reserve_agent] if a.reserve_agent else []) + list(a.jurors or [])
        named += list(a.answer_agents or []) + list(a.answer_trust)
        unknown = sorted({n for n in named if n not in names})
        if unknown:
            raise ValueError(
                "auction.reserve_agent / jurors / answer_agents / answer_trust name agents not "
                f"in the pool: {unknown} "
                f"(pool: {sorted(names)})"
            )
        return self


def default_pool() -> PoolSpec:
    """The embedded default: three local models, small to large (see README 'Models')."""
    return PoolSpec(
        agents=[
            AgentSpec(name="smollm2-135m", model="smollm2-135m"),
            AgentSpec(name="qwen-0.5b", model="qwen2.5-coder-0.5b"),
            AgentSpec(name="qwen-1.5b", model="qwen2.5-coder-1.5b"),
        ]
    )


#: The recommended auction of the embedded pool, fitted by ``sale-ray eval`` (its header says on
#: what); ``embedded_default`` reads it.
RECOMMENDED = Path(__file__).with_name("recommended.yaml")


def embedded_default() -> SaleConfig:
    """What a user who changes nothing runs (``make demo``, ``sale-ray run`` / ``serve`` / ``up``
    without ``--config``): the embedded pool with the recommended auction of
    :data:`RECOMMENDED` (``bid: answer``). ``SaleConfig()`` keeps SALE as published
    (``bid: plan``, shipped weights); so does ``auction: {bid: plan}`` in a config file."""
    data = parse_yaml(RECOMMENDED.read_text(), str(RECOMMENDED)) or {}
    try:
        return SaleConfig.model_validate({"auction": data.get("auction", {})})
    except ValidationError as e:
        raise ConfigError(f"{RECOMMENDED}: {format_validation_error(e)}") from None


def load_config(path: str | Path | None) -> SaleConfig:
    """Read a YAML config; ``None`` gives :func:`embedded_default`. Errors name the file and
    field."""
    if path is None:
        return embedded_default()
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    data = parse_yaml(text, str(p)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    # Cluster files may embed the sale-ray section under a `sale_ray:` key.
    data = data.get("sale_ray", data)
    try:
        return SaleConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{p}: {format_validation_error(e)}") from None


def parse_yaml(text: str, source: str = "<string>", *, documents: bool = False) -> Any:
    """Parse one YAML document (``documents=True``: a list of every ``---`` document), refusing
    a key repeated in one mapping.

    Plain YAML keeps the last of two equal keys, so ``quota: {budget_usd: 10}`` followed by
    another ``quota:`` line silently drops the spending cap; here it is a :class:`ConfigError`
    naming the key and both lines.
    """
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise ConfigError(
                        f"{source}: line {key_node.start_mark.line + 1}: key {key!r} repeated "
                        f"(first at line {seen[key].start_mark.line + 1}); YAML would keep only "
                        "the last"
                    )
                seen[key] = key_node
            return super().construct_mapping(node, deep=deep)

    try:
        if documents:
            return list(yaml.load_all(text, Loader=StrictLoader))  # noqa: S506 - SafeLoader
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None


def write_config_file(path: str | Path, data: Any, header: list[str]) -> Path:
    """Write ``data`` as a YAML config file under ``header`` (comment lines saying what wrote it
    and from what), creating the folder: what the evaluation's fitters hand to ``--config``."""
    import yaml

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("\n".join(header) + "\n" + yaml.safe_dump(data, sort_keys=False))
    return p


def format_validation_error(e: ValidationError) -> str:
    """One line per problem: ``field.path: message`` (input values are not echoed)."""
    parts = []
    for err in e.errors(include_input=False, include_url=False):
        loc = ".".join(str(x) for x in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def _type_name(ann: object) -> str:
    import typing

    if typing.get_origin(ann) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(ann))
    return (
        getattr(ann, "__name__", None)
        if isinstance(ann, type)
        else str(ann)
        .replace("typing.", "")
        .replace("sale_ray.config.", "")
        .replace("__main__.", "")
    )


def reference_markdown() -> str:
    """The configuration reference (docs/configuration.md), generated from the field docs."""
    lines = [
        "# Configuration reference",
        "",
        "Generated by `python -m sale_ray.config` from the pydantic models; every YAML key "
        "of `--config` is listed here with its default.",
        "",
    ]
    seen: set[type] = set()

    def walk(model: type[BaseModel], prefix: str) -> None:
        if model in seen:
            return
        seen.add(model)
        lines.extend(
            [
                f"## `{prefix or '(top level)'}` — {model.__name__}",
                "",
                (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " "),
                "",
                "| key | type | default | meaning |",
                "|---|---|---|---|",
            ]
        )
        nested = []
        for name, f in model.model_fields.items():
            ann = f.annotation
            sub = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
            inner = getattr(ann, "__args__", ())
            sub = sub or next(
                (a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), None
            )
            if f.is_required():
                default = "required"
            elif f.default_factory is not None:
                default = "(see below)" if sub else repr(f.default_factory())
            else:
                default = repr(f.default)
            tname = _type_name(ann).replace("|", "\\|")
            lines.append(f"| `{name}` | {tname} | {default} | {f.description or ''} |")
            if sub:
                nested.append((sub, f"{prefix}.{name}" if prefix else name))
        lines.append("")
        for sub, p in nested:
            walk(sub, p)

    walk(SaleConfig, "")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
