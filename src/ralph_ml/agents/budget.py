"""Token and cost budgets, enforced before a model is called.

A call's ``max_tokens`` is capped to what the tightest budget leaves after the prompt;
when that is below :data:`MIN_COMPLETION_TOKENS` no call is made. If nothing was spent yet
in the cycle, the AgentError carries ``meta["budget_stop"]`` and the loop stops the run
(exit 2) instead of recording a cycle it could not pay for.
"""

from __future__ import annotations

from ..errors import AgentError
from .llm_client import MIN_COMPLETION_TOKENS, BudgetFn, estimate_tokens


def make_budget(
    *,
    max_tokens: int,
    tokens_left: int | None,
    tokens_left_cycle: int | None,
    cost_left_usd: float | None,
    price_per_1k_input: float,
    price_per_1k_output: float,
) -> BudgetFn:
    def cap(spent_tokens: int, spent_cost: float, prompt_chars: int) -> int:
        prompt = estimate_tokens(prompt_chars)
        allowed = max_tokens
        binding: tuple[str, str, str] | None = None  # (budget key, what is left, kind)
        limits: tuple[tuple[str, int | None, str], ...] = (
            ("safeguards.token_budget_total", tokens_left, "tokens"),
            ("safeguards.token_budget_per_cycle", tokens_left_cycle, "cycle"),
        )
        for key, left, kind in limits:
            if left is None:
                continue
            room = left - spent_tokens - prompt
            if room < allowed:
                allowed, binding = room, (key, f"{left - spent_tokens} tokens", kind)
        if cost_left_usd is not None and (price_per_1k_input > 0 or price_per_1k_output > 0):
            money = cost_left_usd - spent_cost - prompt / 1000 * price_per_1k_input
            room = int(money / price_per_1k_output * 1000) if price_per_1k_output > 0 else (allowed if money > 0 else 0)
            if room < allowed:
                allowed, binding = room, ("safeguards.cost_budget_usd", f"${cost_left_usd - spent_cost:.4f}", "cost")
        if binding is None or allowed >= MIN_COMPLETION_TOKENS:
            return allowed
        key, left_s, kind = binding
        meta: dict[str, object] = {}
        if spent_tokens == 0:
            meta["budget_stop"] = "cost" if kind == "cost" else "tokens"
        raise AgentError(
            f"not calling the model: {key} leaves {left_s}, and the prompt alone needs about {prompt} tokens "
            f"plus at least {MIN_COMPLETION_TOKENS} for the reply. Raise {key}, or lower "
            "agents.llm.prompt_budget_chars / code_budget_chars to send a smaller prompt.",
            meta=meta,
        )

    return cap
