"""Counters of the server, rendered in Prometheus' text format (version 0.0.4) by hand: tokens and
seconds (rates come from the scraper), acceptance per draft position, mean draft length, the queue."""
from __future__ import annotations

import threading
from collections import Counter

from .._lib import MAX_DRAFT


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter = Counter()          # (endpoint, status) -> count
        self.n_rejected = 0
        self.n_cancelled = 0
        self.n_done = {"chat": 0, "completion": 0}
        self.prompt_tokens = 0
        self.prompt_cached = 0
        self.prompt_evaluated = 0
        self.generated = 0
        self.steps = 0
        self.t_prefill = 0.0
        self.t_decode = 0.0
        self.t_wait = 0.0
        self.drafted = [0] * MAX_DRAFT
        self.accepted = [0] * MAX_DRAFT
        self.drafts_per_step = [0] * (MAX_DRAFT + 1)
        self.last_decode_rate = 0.0

    def request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def rejected(self) -> None:
        with self._lock:
            self.n_rejected += 1

    def finished(self, kind: str, stats, n_prompt: int, n_generated: int, wait: float, cancelled: bool) -> None:
        with self._lock:
            self.n_done[kind] = self.n_done.get(kind, 0) + 1
            self.n_cancelled += int(cancelled)
            self.prompt_tokens += n_prompt
            self.prompt_cached += stats.cached_tokens
            self.prompt_evaluated += stats.prompt_tokens + stats.reevaluated_tokens
            self.generated += n_generated
            self.steps += stats.steps
            self.t_prefill += stats.t_prefill
            self.t_decode += stats.t_draft + stats.t_verify + stats.t_other
            self.t_wait += wait
            for i, (d, a) in enumerate(zip(stats.drafted, stats.accepted)):
                self.drafted[i] += d
                self.accepted[i] += a
            for k, n in enumerate(stats.drafts_per_step):
                self.drafts_per_step[k] += n
            self.last_decode_rate = stats.decode_tokens_per_second

    def render(self, pool: dict) -> str:
        """The exposition text; pool is the engine's snapshot (sessions, busy, queue, max_queue)."""
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP mtpllama_{name} {help_}")
            out.append(f"# TYPE mtpllama_{name} {kind}")
            for labels, value in samples:
                out.append(f"mtpllama_{name}{labels} {value:.10g}")

        with self._lock:
            metric("requests_total", "counter", "HTTP requests answered, by endpoint and status.",
                   [(f'{{endpoint="{e}",status="{s}"}}', n) for (e, s), n in sorted(self.requests.items())])
            metric("requests_rejected_total", "counter", "Requests refused because every session was busy and the "
                   "queue was full.", [("", self.n_rejected)])
            metric("requests_cancelled_total", "counter", "Generations stopped early (client gone or shutdown).",
                   [("", self.n_cancelled)])
            metric("generations_total", "counter", "Generations finished, by kind.",
                   [(f'{{kind="{k}"}}', n) for k, n in sorted(self.n_done.items())])
            metric("prompt_tokens_total", "counter", "Prompt tokens of finished generations.", [("", self.prompt_tokens)])
            metric("prompt_tokens_cached_total", "counter", "Prompt tokens found in a session's cache (not evaluated).",
                   [("", self.prompt_cached)])
            metric("prompt_tokens_evaluated_total", "counter", "Prompt tokens evaluated (re-evaluated ones included).",
                   [("", self.prompt_evaluated)])
            metric("generated_tokens_total", "counter", "Tokens generated.", [("", self.generated)])
            metric("steps_total", "counter", "Trunk passes that emitted tokens.", [("", self.steps)])
            metric("prefill_seconds_total", "counter", "Seconds evaluating prompts.", [("", self.t_prefill)])
            metric("decode_seconds_total", "counter", "Seconds generating (drafting, verifying, the rest of a step).",
                   [("", self.t_decode)])
            metric("queue_wait_seconds_total", "counter", "Seconds requests waited for a session.", [("", self.t_wait)])
            rate = self.generated / self.t_decode if self.t_decode > 0 else 0.0
            metric("decode_tokens_per_second", "gauge", "Tokens generated per decoding second, over the server's life.",
                   [("", rate)])
            metric("last_decode_tokens_per_second", "gauge", "Decode speed of the last finished generation.",
                   [("", self.last_decode_rate)])
            n = max((i + 1 for i, d in enumerate(self.drafted) if d), default=0)
            metric("drafted_total", "counter", "Drafts verified, by draft position (1 = the first draft of a step).",
                   [(f'{{position="{i + 1}"}}', self.drafted[i]) for i in range(n)])
            metric("accepted_total", "counter", "Drafts accepted, by draft position.",
                   [(f'{{position="{i + 1}"}}', self.accepted[i]) for i in range(n)])
            metric("acceptance", "gauge", "Accepted / drafted, by draft position.",
                   [(f'{{position="{i + 1}"}}', self.accepted[i] / self.drafted[i]) for i in range(n) if self.drafted[i]])
            verify_steps = sum(self.drafts_per_step)
            mean_len = sum(k * c for k, c in enumerate(self.drafts_per_step)) / verify_steps if verify_steps else 0.0
            metric("mean_draft_length", "gauge", "Drafts verified per decoding step (plain steps count 0).",
                   [("", mean_len)])
            mean_tok = self.generated / self.steps if self.steps else 0.0
            metric("mean_tokens_per_step", "gauge", "Tokens emitted per trunk pass.", [("", mean_tok)])
        metric("sessions", "gauge", "Sessions (sequences served at once).", [("", pool["sessions"])])
        metric("sessions_busy", "gauge", "Sessions generating now.", [("", pool["busy"])])
        metric("queue_depth", "gauge", "Requests waiting for a session.", [("", pool["queue"])])
        metric("queue_capacity", "gauge", "Requests that may wait before new ones are refused.", [("", pool["max_queue"])])
        g = pool.get("group")
        if g is not None:
            metric("group_passes_total", "counter", "Shared trunk passes (one per step for every request generating).",
                   [("", g.passes)])
            metric("group_sequence_steps_total", "counter", "Request steps those passes verified.", [("", g.seq_steps)])
            metric("group_rows_total", "counter", "Rows those passes evaluated, filler rows apart.", [("", g.rows)])
            metric("group_pad_rows_total", "counter", "Filler rows (every sequence of a pass gets as many rows).",
                   [("", g.pad_rows)])
            metric("group_pass_seconds_total", "counter", "Seconds in shared trunk passes.", [("", g.t_pass)])
            metric("sequences_per_pass", "gauge", "Requests verified per shared trunk pass, over the server's life.",
                   [("", g.sequences_per_pass)])
        return "\n".join(out) + "\n"
