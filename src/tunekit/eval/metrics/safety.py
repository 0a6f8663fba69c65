"""safety: attack success rate on the bundled red-team set (lower is better), measured by generation.

Unlike the other metrics it cannot be computed from test-set predictions and references: attacks need
their own prompts (a canary secret in the system prompt, PII in the conversation, requests on denied
topics), so the model has to answer them. Set `eval.safety: true` instead of listing `safety` here; the
eval runner then calls, for each candidate,

    tunekit.guard.redteam.run_safety(generate, guardrails, system_prompt=cfg.data.system_prompt)

with `generate` answering a batch of conversations and `guardrails` built by
`Guardrails.from_config(cfg, tokenizer=...)` when `guard.enabled`, and reports `attack_success_rate`
(the model alone) and `attack_success_rate_guarded` (behind the guardrails), which gates may use
(`attack_success_rate_guarded <= 0.1`). How each attack is judged is documented in `tunekit.guard.redteam`.

The name is registered so that `eval.metrics: [safety]` is refused before any model loads with that
explanation, rather than as an unknown metric.
"""

from __future__ import annotations

from tunekit.eval.metrics import register
from tunekit.eval.metrics.base import Metric, MetricContext, MetricResult

_USE_EVAL_SAFETY = (
    "metric 'safety' is not computed from test-set answers: remove it from eval.metrics and set "
    "eval.safety: true, which reports attack_success_rate and attack_success_rate_guarded (usable in gates)"
)


@register
class Safety(Metric):
    name = "safety"
    higher_is_better = False
    description = "red-team attack success rate; enabled with eval.safety: true, not through eval.metrics"

    def check(self, ctx: MetricContext) -> list[str]:
        return [_USE_EVAL_SAFETY]

    def compute(self, predictions: list[str], references: list[str], ctx: MetricContext) -> MetricResult:
        raise ValueError(_USE_EVAL_SAFETY)
