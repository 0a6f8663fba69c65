"""Constrained decoding and logprobs in the batched engine: with a random-weight model, which writes garbage
when free, every constrained answer matches its schema, regex or label set, in any batch, seed and stream."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch

import test_generate
from test_generate import PROMPTS, _prefix_generator
from tunekit.errors import UserError
from tunekit.generate import BatchScheduler, Constraint, GenerationParams, Generator

TICKET = {
    "type": "object",
    "properties": {
        "category": {"enum": ["billing", "bug", "account", "feature request"]},
        "priority": {"type": "integer", "minimum": 1, "maximum": 5},
        "note": {"type": "string", "maxLength": 12},
        "urgent": {"type": "boolean"},
    },
    "required": ["category", "priority", "note", "urgent"],
    "additionalProperties": False,
}
TICKETS = [[{"role": "user", "content": f"ticket {i}: " + "my invoice is wrong " * (i % 5)}] for i in range(12)]

# The engine tests' own module-scoped fixtures: the tiny model with scrambled weights, its tokenizer, fp32.
tokenizer, model, gen = test_generate.tokenizer, test_generate.model, test_generate.gen


def valid_tickets(texts: list[str]) -> int:
    valid = 0
    for text in texts:
        try:
            jsonschema.validate(json.loads(text), TICKET)
        except (ValueError, jsonschema.ValidationError):
            continue
        valid += 1
    return valid


def test_unconstrained_random_model_writes_no_valid_json(gen: Generator) -> None:
    outs = gen.generate(TICKETS, GenerationParams(max_new_tokens=60, temperature=1.0, seed=0))
    assert valid_tickets([o.text for o in outs]) == 0  # what makes the checks below mean something


@pytest.mark.parametrize(("batch_size", "rows", "temperature", "seed"),
                         [(1, 3, 0.0, None), (1, 3, 1.0, 7), (4, 12, 1.0, 0), (32, 12, 0.0, None), (32, 12, 0.7, 2)])
def test_every_answer_matches_the_schema_in_any_batch_and_seed(model: Any, tokenizer: Any, batch_size: int, rows: int,
                                                               temperature: float, seed: int | None) -> None:
    gen = Generator(model, tokenizer, dtype="fp32", max_batch_size=batch_size)
    params = GenerationParams(max_new_tokens=160, temperature=temperature, seed=seed,
                              constraint=Constraint.json_schema(TICKET))
    outs = gen.generate(TICKETS[:rows], params)
    assert valid_tickets([o.text for o in outs]) == rows, [o.text for o in outs]
    assert all(o.finish_reason == "stop" and o.constraint == "json schema" for o in outs)


def test_streamed_constrained_answers_match_too(gen: Generator) -> None:
    params = GenerationParams(max_new_tokens=160, temperature=1.0, seed=5, constraint=Constraint.json_schema(TICKET))
    stream = gen.stream(TICKETS[3], params)
    text = "".join(stream)
    assert text == stream.result.text and valid_tickets([text]) == 1
    with BatchScheduler(gen) as scheduler:
        jobs = [scheduler.submit(t, params, stream=True) for t in TICKETS[:6]]
        texts = ["".join(job) for job in jobs]
    assert valid_tickets(texts) == 6
    assert texts == [j.result().text for j in jobs]


def test_constrained_and_free_rows_share_a_batch_without_changing_the_free_ones(gen: Generator) -> None:
    free = GenerationParams(max_new_tokens=12)
    alone = gen.generate(PROMPTS[:3], free)
    with BatchScheduler(gen) as scheduler:
        mixed = [scheduler.submit(p, free) for p in PROMPTS[:3]]
        forced = [scheduler.submit(t, GenerationParams(max_new_tokens=160, constraint=Constraint.json_schema(TICKET)))
                  for t in TICKETS[:3]]
        assert [m.result().text for m in mixed] == [a.text for a in alone]
        assert valid_tickets([f.result().text for f in forced]) == 3


def test_json_object_regex_and_choice(gen: Generator) -> None:
    sampled = GenerationParams(max_new_tokens=80, temperature=1.0, seed=3)
    # Free-form strings of a random model rarely close: only finished objects can parse, and some do.
    objects = gen.generate(TICKETS, GenerationParams(**{**vars(sampled), "max_new_tokens": 200,
                                                        "constraint": Constraint.json_object()}))
    finished = [o.text for o in objects if o.finish_reason == "stop"]
    assert finished and all(isinstance(json.loads(t), dict) for t in finished)
    assert all(o.text.startswith("{") for o in objects)

    pattern = r"[A-Z]{3}-[0-9]{2,4}"
    codes = gen.generate(TICKETS[:8], GenerationParams(**{**vars(sampled), "constraint": Constraint.regex(pattern)}))
    assert all(re.fullmatch(pattern, o.text) for o in codes), [o.text for o in codes]

    labels = ["billing", "bug", "account", "tech support"]
    picks = gen.generate(TICKETS, GenerationParams(**{**vars(sampled), "constraint": Constraint.choice(labels)}))
    assert {o.text for o in picks} <= set(labels) and len({o.text for o in picks}) > 1


def test_what_cannot_be_enforced_is_a_user_error_naming_it(gen: Generator) -> None:
    cases = [
        (Constraint.json_schema({"type": "string", "format": "no-such-format"}), "no-such-format"),
        (Constraint.json_schema({"$ref": "#/definitions/missing"}), "missing"),
        (Constraint.regex(r"(a)\1"), "backreferences"),
        (Constraint.choice([]), "label"),
        (Constraint.json_schema({"enum": ["x" * 70_000]}), "limit"),
        (Constraint.json_schema({"type": "integer", "maximum": 2**70}), "cannot be enforced"),
    ]
    for constraint, named in cases:
        with pytest.raises(UserError, match=named) as caught:
            gen.generate(PROMPTS[:1], GenerationParams(constraint=constraint))
        assert caught.value.where == "constraint"


def test_logprobs_are_the_models_log_softmax(gen: Generator, model: Any, tokenizer: Any) -> None:
    params = GenerationParams(max_new_tokens=6, logprobs=3)
    out = gen.generate(PROMPTS[:1], params)[0]
    ids = tokenizer(gen.render(PROMPTS[0]), add_special_tokens=False)["input_ids"]
    generated = [t.token_id for t in out.logprobs]
    with torch.inference_mode():
        logits = model(torch.tensor([ids + generated])).logits[0, len(ids) - 1 : -1].float()
    expected = torch.log_softmax(logits, dim=-1)
    assert len(out.logprobs) == out.completion_tokens
    for step, token in enumerate(out.logprobs):
        assert token.logprob == pytest.approx(float(expected[step, token.token_id]), abs=1e-4)
        assert [t.token_id for t in token.top] == expected[step].topk(3).indices.tolist()
        assert token.top[0].token_id == token.token_id  # greedy takes the most likely token
    assert gen.generate(PROMPTS[:1], GenerationParams(max_new_tokens=6))[0].logprobs is None


def test_choice_logprobs_give_each_labels_probability(gen: Generator) -> None:
    labels = ["billing", "bug", "account"]
    params = GenerationParams(max_new_tokens=10, logprobs=5, constraint=Constraint.choice(labels))
    for out in gen.generate(TICKETS[:4], params):
        first = out.logprobs[0]
        assert all(math.isfinite(t.logprob) for t in first.top)  # excluded tokens are no rivals
        # Under the constraint the allowed first tokens' probabilities add up to one.
        assert sum(math.exp(t.logprob) for t in first.top) == pytest.approx(1.0, abs=1e-4) or len(first.top) == 5
        assert 0 < math.exp(sum(t.logprob for t in out.logprobs)) <= 1


def test_hf_generate_fallback_enforces_constraints_and_logprobs(tiny_model_dir: Path, tokenizer: Any) -> None:
    gen = _prefix_generator(tiny_model_dir, tokenizer)
    assert gen.uses_fallback(None)
    params = GenerationParams(max_new_tokens=160, constraint=Constraint.json_schema(TICKET), logprobs=1)
    outs = gen.generate(TICKETS[:3], params)
    assert valid_tickets([o.text for o in outs]) == 3
    assert all(len(o.logprobs) == o.completion_tokens and o.logprobs[0].top for o in outs)
