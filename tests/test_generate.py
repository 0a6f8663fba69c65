"""The batched generation engine against HF generate: greedy identity, stopping, sampling, streaming,
adapters, threads, the background scheduler, and other architectures the fast path claims."""

from __future__ import annotations

import threading
import time
import warnings
from collections import Counter
from concurrent.futures import CancelledError
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from tunekit.errors import UserError
from tunekit.eval.latency import measure_latency, sample_rows
from tunekit.generate import BatchScheduler, GenerationParams, Generator, check_params

PROMPTS = [[{"role": "user", "content": "hello world " * n}] for n in (1, 7, 23, 3, 40, 0)]


@pytest.fixture(autouse=True)
def _quiet() -> Any:
    with warnings.catch_warnings():  # PEFT's `past_key_values` deprecation chatter under transformers 5
        warnings.simplefilter("ignore", FutureWarning)
        yield


def scrambled(model: torch.nn.Module, std: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Larger random weights: the fixture's 0.02-std init predicts the same token forever, which would
    make every comparison below pass trivially."""
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, std, generator=rng)
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return scrambled(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32))


@pytest.fixture(scope="module")
def gen(model: Any, tokenizer: Any) -> Generator:
    return Generator(model, tokenizer, dtype="fp32")


def hf_ids(model: Any, tokenizer: Any, text: str, max_new_tokens: int, **kwargs: Any) -> list[int]:
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, **kwargs)
    return out[0, enc["input_ids"].shape[1] :].tolist()


def hf_text(model: Any, tokenizer: Any, text: str, max_new_tokens: int, **kwargs: Any) -> str:
    """HF's answer without its final EOS (an extra EOS id need not be a special token decode would skip)."""
    ids = hf_ids(model, tokenizer, text, max_new_tokens, **kwargs)
    if ids and ids[-1] in kwargs.get("eos_token_id", ()):
        ids = ids[:-1]
    return tokenizer.decode(ids, skip_special_tokens=True)


def test_greedy_fp32_equals_hf_generate_per_prompt(gen: Generator, model: Any, tokenizer: Any) -> None:
    outs = gen.generate(PROMPTS, GenerationParams(max_new_tokens=24))
    expected = [hf_text(model, tokenizer, gen.render(p), 24) for p in PROMPTS]
    assert [o.text for o in outs] == expected
    assert len(set(expected)) == len(expected)  # the prompts really lead to different answers
    for prompt, out in zip(PROMPTS, outs):
        assert out.prompt_tokens == len(tokenizer(gen.render(prompt), add_special_tokens=False)["input_ids"])
        assert (out.completion_tokens, out.finish_reason) == (24, "length")
        assert 0 < out.ttft_s <= out.latency_s


def test_prompts_with_a_common_beginning_run_it_once_and_answer_the_same(gen: Generator, model: Any,
                                                                        tokenizer: Any, monkeypatch: Any) -> None:
    """Few-shot prompts: the system turn and the examples are the same tokens in every prompt. They run once
    for the whole batch, and each answer is still HF generate's for that prompt alone."""
    from tunekit.generate import batching

    shots = [{"role": "user", "content": "hello world " * 9}, {"role": "assistant", "content": "world hello " * 5}]
    prompts = [[{"role": "system", "content": "be brief " * 6}, *shots, {"role": "user", "content": "hello " * n}]
               for n in (1, 12, 4, 30)]
    computed: list[int] = []
    compute = batching.SharedPrefix.compute
    monkeypatch.setattr(batching.SharedPrefix, "compute",
                        lambda *a, **k: computed.append(len(a[2])) or compute(*a, **k))
    outs = gen.generate(prompts, GenerationParams(max_new_tokens=16))
    rendered = [tokenizer(gen.render(p), add_special_tokens=False)["input_ids"] for p in prompts]
    assert computed == [batching.common_prefix_length(rendered)] and computed[0] >= batching.SHARED_PREFIX_MIN
    assert [o.text for o in outs] == [hf_text(model, tokenizer, gen.render(p), 16) for p in prompts]
    assert [o.prompt_tokens for o in outs] == [len(r) for r in rendered]


def test_models_that_call_the_cache_past_key_values_generate_the_same(model: Any, tokenizer: Any,
                                                                        gen: Generator) -> None:
    """transformers 5 releases before the `cache` rename (5.17 on the GPU machine) take `past_key_values` and
    let a `cache` argument fall into **kwargs, building a cache of their own that the engine's mask misses."""
    import copy
    import inspect

    parent = type(model)
    name = "cache" if "cache" in inspect.signature(parent.forward).parameters else "past_key_values"

    class OlderForward(parent):  # the older signature, on the same weights
        def forward(self, input_ids: Any = None, attention_mask: Any = None, position_ids: Any = None,
                    past_key_values: Any = None, use_cache: Any = None, logits_to_keep: Any = 0, **kwargs: Any) -> Any:
            kwargs.pop("cache", None)  # what the older forward did with it, in effect
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   use_cache=use_cache, logits_to_keep=logits_to_keep, **{name: past_key_values})

    older = copy.deepcopy(model)
    older.__class__ = OlderForward
    params = GenerationParams(max_new_tokens=12)
    got = Generator(older, tokenizer, dtype="fp32").generate(PROMPTS, params)
    assert [o.text for o in got] == [o.text for o in gen.generate(PROMPTS, params)]


def test_small_batches_refill_free_slots(model: Any, tokenizer: Any, gen: Generator) -> None:
    """Two rows at a time, rows ending at different steps (EOS): admission, merging and dropping rows."""
    eos = [tokenizer.eos_token_id, most_common_token(gen, 20)]
    model.generation_config.eos_token_id = eos
    try:
        small = Generator(model, tokenizer, dtype="fp32", max_batch_size=2)
        outs = small.generate(PROMPTS, GenerationParams(max_new_tokens=20))
        expected = [hf_text(model, tokenizer, gen.render(p), 20, eos_token_id=eos) for p in PROMPTS]
    finally:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    assert [o.text for o in outs] == expected
    assert {o.finish_reason for o in outs} == {"stop", "length"}
    assert len({o.completion_tokens for o in outs}) > 2


def most_common_token(gen: Generator, max_new_tokens: int) -> int:
    """The token found in most of the greedy answers to PROMPTS: as an extra EOS, rows end at different steps."""
    answers = [set(hf_ids(gen.model, gen.tokenizer, gen.render(p), max_new_tokens)) for p in PROMPTS]
    return Counter(t for a in answers for t in a).most_common(1)[0][0]


def test_generation_config_eos_stops_and_is_not_in_the_text(model: Any, tokenizer: Any) -> None:
    text = Generator(model, tokenizer, dtype="fp32").render(PROMPTS[2])
    ids = hf_ids(model, tokenizer, text, 12)
    stop_id = ids[5]
    at = ids.index(stop_id)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, stop_id]
    try:
        out = Generator(model, tokenizer, dtype="fp32").generate([text], GenerationParams(max_new_tokens=12))[0]
    finally:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    assert out.finish_reason == "stop"
    assert out.completion_tokens == at + 1  # the EOS counts as generated, as in the baseline's count
    assert out.text == tokenizer.decode(ids[:at], skip_special_tokens=True)


def test_stop_strings_cut_the_text_and_end_the_row(gen: Generator) -> None:
    full = gen.generate(PROMPTS, GenerationParams(max_new_tokens=24))
    stop = full[1].text[6:9]
    outs = gen.generate(PROMPTS, GenerationParams(max_new_tokens=24, stop=(stop, "never appears")))
    assert outs[1].text == full[1].text[: full[1].text.find(stop)]
    assert outs[1].finish_reason == "stop" and outs[1].completion_tokens < 24
    for whole, cut in zip(full, outs):
        assert cut.text == (whole.text[: whole.text.find(stop)] if stop in whole.text else whole.text)


def test_max_new_tokens_and_order_match_single_calls(gen: Generator) -> None:
    batch = gen.generate(PROMPTS[::-1], GenerationParams(max_new_tokens=5))
    singles = [gen.generate([p], GenerationParams(max_new_tokens=5))[0] for p in PROMPTS[::-1]]
    assert [o.text for o in batch] == [o.text for o in singles]
    assert all(o.completion_tokens == 5 and o.finish_reason == "length" for o in batch)
    rendered = gen.generate([gen.render(PROMPTS[2])], GenerationParams(max_new_tokens=5))[0]
    assert rendered.text == singles[-3].text  # a str prompt is taken as already rendered


def test_seeded_sampling_is_reproducible_in_any_batch(gen: Generator) -> None:
    params = GenerationParams(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=7)
    first = [o.text for o in gen.generate(PROMPTS, params)]
    assert [o.text for o in gen.generate(PROMPTS, params)] == first
    assert gen.generate([PROMPTS[3]], params)[0].text == first[3]
    other = [o.text for o in gen.generate(PROMPTS, GenerationParams(max_new_tokens=16, temperature=1.0, seed=8))]
    assert other != first
    greedy = [o.text for o in gen.generate(PROMPTS, GenerationParams(max_new_tokens=16))]
    assert first != greedy
    nucleus_of_one = GenerationParams(max_new_tokens=16, temperature=1.0, top_p=1e-6, seed=3)
    assert [o.text for o in gen.generate(PROMPTS, nucleus_of_one)] == greedy


def test_stream_deltas_join_to_the_generated_text(gen: Generator) -> None:
    full = gen.generate([PROMPTS[1]], GenerationParams(max_new_tokens=24))[0]
    for params in (GenerationParams(max_new_tokens=24), GenerationParams(max_new_tokens=24, stop=(full.text[8:11],))):
        expected = gen.generate([PROMPTS[1]], params)[0]
        stream = gen.stream(PROMPTS[1], params)
        deltas = list(stream)
        assert len(deltas) > 1 and all(deltas)
        assert "".join(deltas) == expected.text == stream.result.text
        assert stream.result.finish_reason == expected.finish_reason


def test_stream_never_shows_part_of_a_stop_string(gen: Generator) -> None:
    text = gen.generate([PROMPTS[4]], GenerationParams(max_new_tokens=30))[0].text
    stop = text[10:16]
    final = text[: text.find(stop)]
    shown = ""
    for delta in gen.stream(PROMPTS[4], GenerationParams(max_new_tokens=30, stop=(stop,))):
        shown += delta
        assert final.startswith(shown)  # nothing shown is ever taken back
    assert shown == final


def two_adapters(tiny_model_dir: Path, config: Any) -> Any:
    """A PeftModel with adapters 'first' and 'second' of the given config, randomly initialised."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    base = scrambled(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32))
    torch.manual_seed(1)
    peft = get_peft_model(base, config, adapter_name="first")
    torch.manual_seed(2)
    peft.add_adapter("second", config)
    return peft.eval()


def lora_config() -> Any:
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)


def test_two_lora_adapters_selected_by_name(tiny_model_dir: Path, tokenizer: Any) -> None:
    peft = two_adapters(tiny_model_dir, lora_config())
    gen = Generator(peft, tokenizer, dtype="fp32")
    params = GenerationParams(max_new_tokens=16)
    by_name = {name: [o.text for o in gen.generate(PROMPTS, params, adapter=name)] for name in ("first", "second")}
    assert by_name["first"] != by_name["second"]
    assert [o.text for o in gen.generate(PROMPTS, params)] == by_name["first"]  # the adapter active at creation
    for name, texts in by_name.items():
        peft.set_adapter(name)
        assert texts == [hf_text(peft, tokenizer, gen.render(p), 16) for p in PROMPTS]
    assert peft.active_adapter == "second"
    peft.set_adapter("first")
    gen.generate(PROMPTS[:1], params, adapter="second")
    assert peft.active_adapter == "first"  # the caller's model is left as it was
    with pytest.raises(UserError, match="no adapter named 'third'"):
        gen.generate(PROMPTS, params, adapter="third")


def test_rows_of_different_lora_adapters_decode_in_one_batch(tiny_model_dir: Path, tokenizer: Any) -> None:
    peft = two_adapters(tiny_model_dir, lora_config())
    gen = Generator(peft, tokenizer, dtype="fp32")
    params = GenerationParams(max_new_tokens=12)
    alone = {name: [o.text for o in gen.generate(PROMPTS, params, adapter=name)] for name in ("first", "second")}
    with BatchScheduler(gen) as scheduler:
        names = ["first", "second"] * len(PROMPTS)
        jobs = [scheduler.submit(PROMPTS[i // 2], params, adapter=name) for i, name in enumerate(names)]
        texts = [job.result(timeout=60).text for job in jobs]
    assert texts[0::2] == alone["first"] and texts[1::2] == alone["second"]  # each row its own adapter's answer
    assert gen.stacked_lora.mixed_forwards > 0  # and they shared forward passes


def test_stacked_lora_forward_equals_peft_mixed_batch_forward(tiny_model_dir: Path) -> None:
    from peft import LoraConfig

    from tunekit.generate.multi_lora import StackedLora

    peft = two_adapters(tiny_model_dir, lora_config())
    wider = LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "o_proj", "down_proj"], init_lora_weights=False)
    peft.add_adapter("third", wider)  # another rank, and layers the first two do not touch
    stacked = StackedLora(peft)
    assert stacked.usable
    ids = torch.randint(3, 200, (5, 7), generator=torch.Generator().manual_seed(3))
    rows = ["first", "third", "second", "first", "third"]
    with torch.no_grad():
        expected = peft(input_ids=ids, adapter_names=rows).logits
        with stacked.rows(rows):
            logits = peft(input_ids=ids).logits
        after = peft(input_ids=ids).logits  # nothing stays behind: the active adapter's forward again
        peft.set_adapter("first")
        first_alone = peft(input_ids=ids).logits
    # fp32, equal up to summation order (the stacked matmul also adds the other adapters' zeroed columns)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=5e-5)
    torch.testing.assert_close(after, first_alone)


def test_adapters_that_cannot_mix_take_turns_first_come_first_served(tiny_model_dir: Path, tokenizer: Any) -> None:
    # (IA)^3 rescales activations for the whole batch, so its adapters run one at a time. A request for the
    # other adapter must not wait behind requests for the running one that arrived after it, whether they
    # arrive while a batch runs or all at once.
    from peft import IA3Config

    peft = two_adapters(tiny_model_dir, IA3Config(target_modules=["k_proj", "v_proj", "down_proj"],
                                                  feedforward_modules=["down_proj"], init_ia3_weights=False))
    gen = Generator(peft, tokenizer, dtype="fp32")
    long, short = GenerationParams(max_new_tokens=40), GenerationParams(max_new_tokens=4)
    for steps_before_the_rest in (0, 1):
        finish_order: list[str] = []
        early = [gen.request(p, long, "first") for p in PROMPTS]
        other = gen.request(PROMPTS[0], short, "second")
        late = [gen.request(p, long, "first") for p in PROMPTS]
        for name, requests in (("early", early), ("other", [other]), ("late", late)):
            for request in requests:
                request.on_finish = lambda _r, name=name, order=finish_order: order.append(name)
        with gen.decoding(None):
            runner = gen.runner()
            runner.add(early)
            for _ in range(steps_before_the_rest):
                runner.step()
            runner.add([other, *late])
            while runner.busy:
                runner.step()
        assert finish_order.index("other") < finish_order.index("late"), steps_before_the_rest
        assert other.result.text == gen.generate([PROMPTS[0]], short, adapter="second")[0].text


def test_prefix_tuning_falls_back_to_hf_generate(tiny_model_dir: Path, tokenizer: Any) -> None:
    from peft import PrefixTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunekit.methods import fix_prompt_learning_generate

    base = scrambled(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32))
    torch.manual_seed(3)
    model = fix_prompt_learning_generate(get_peft_model(base, PrefixTuningConfig(num_virtual_tokens=4,
                                                                                 task_type="CAUSAL_LM"))).eval()
    gen = Generator(model, tokenizer, dtype="fp32")
    assert gen.uses_fallback(None)
    outs = gen.generate(PROMPTS[:3], GenerationParams(max_new_tokens=10))
    assert [o.text for o in outs] == [hf_text(model, tokenizer, gen.render(p), 10) for p in PROMPTS[:3]]
    assert "".join(gen.stream(PROMPTS[0], GenerationParams(max_new_tokens=10))) == outs[0].text


def _prefix_generator(tiny_model_dir: Path, tokenizer: Any) -> Generator:
    from peft import PrefixTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunekit.methods import fix_prompt_learning_generate

    base = scrambled(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32))
    torch.manual_seed(3)
    config = PrefixTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM")
    return Generator(fix_prompt_learning_generate(get_peft_model(base, config)).eval(), tokenizer, dtype="fp32")


def test_a_cancelled_hf_generate_request_stops_at_the_next_token(tiny_model_dir: Path, tokenizer: Any) -> None:
    # HF generate runs a prefix-tuning request to its end in one call: without a check between tokens, a
    # client that timed out or went away would still hold the scheduler for max_new_tokens.
    from tunekit.generate.hf_fallback import hf_generate

    gen = _prefix_generator(tiny_model_dir, tokenizer)
    request = gen.request(PROMPTS[1], GenerationParams(max_new_tokens=60), None)
    forwards = 0

    def cancel_at_the_third_forward(*_: Any) -> None:
        nonlocal forwards
        forwards += 1
        request.cancelled = forwards >= 3

    hook = gen.model.get_base_model().register_forward_hook(cancel_at_the_third_forward)
    try:
        with gen.decoding(None):
            hf_generate(gen.model, gen.tokenizer, request, gen.eos_ids, gen.pad_id)
    finally:
        hook.remove()
    assert forwards <= 3
    assert not request.done or request.result.finish_reason == "stop"  # cancelled, or an EOS came sooner


def test_a_request_cancelled_while_queued_for_hf_generate_never_runs(tiny_model_dir: Path, tokenizer: Any) -> None:
    gen = _prefix_generator(tiny_model_dir, tokenizer)
    params = GenerationParams(max_new_tokens=8)
    with BatchScheduler(gen) as scheduler:
        with gen.decoding(None):  # holding the generator's lock: nothing runs until both are queued
            first = scheduler.submit(PROMPTS[0], params)
            second = scheduler.submit(PROMPTS[1], params)
            second.cancel()
        assert first.result(timeout=60).text == gen.generate([PROMPTS[0]], params)[0].text
        with pytest.raises(CancelledError):
            second.result(timeout=1)
    assert second.request.completion_tokens == 0 and not second.request.done


def test_threads_calling_generate_get_their_own_results(gen: Generator) -> None:
    params = GenerationParams(max_new_tokens=12)
    expected = {i: gen.generate([p], params)[0].text for i, p in enumerate(PROMPTS)}
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for _ in range(3):
                results[i] = gen.generate([PROMPTS[i]], params)[0].text
                assert results[i] == expected[i]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == expected


def test_scheduler_batches_concurrent_submissions(gen: Generator) -> None:
    params = GenerationParams(max_new_tokens=12, stop=("\n",))
    expected = [o.text for o in gen.generate(PROMPTS, params)]
    with BatchScheduler(gen) as scheduler:
        jobs = [scheduler.submit(p, params, stream=i % 2 == 0) for i, p in enumerate(PROMPTS)]
        streamed = ["".join(job) for job in jobs[::2]]
        assert [job.result(timeout=60).text for job in jobs] == expected
    assert streamed == expected[::2]
    with pytest.raises(UserError):
        scheduler.submit(PROMPTS[0], GenerationParams(temperature=-1))


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs at least 2 intra-op threads")
def test_a_small_batch_steps_on_one_thread_and_hands_the_threads_back(gen: Generator) -> None:
    configured, seen = torch.get_num_threads(), []
    params = GenerationParams(max_new_tokens=6)
    with BatchScheduler(gen) as scheduler:
        step = scheduler._runner.step

        def spied() -> None:  # on the scheduler's thread, inside the step
            seen.append((scheduler._step_tokens(), torch.get_num_threads()))
            step()

        scheduler._runner.step = spied  # type: ignore[method-assign]
        scheduler.submit(PROMPTS[0], params).result(timeout=60)
        jobs = [scheduler.submit(p, params) for p in PROMPTS * 2]
        [job.result(timeout=60) for job in jobs]
    assert {threads for tokens, threads in seen if tokens <= 2} == {1}  # one stream: the other cores serve HTTP
    assert {threads for tokens, threads in seen if tokens > 2} == {configured}  # prefills and larger batches
    assert any(tokens <= 2 for tokens, _ in seen) and any(tokens > 2 for tokens, _ in seen)
    assert torch.get_num_threads() == configured


def test_latency_probe_times_requests_one_at_a_time_or_together(gen: Generator) -> None:
    params = GenerationParams(max_new_tokens=32)
    expected = [o.text for o in gen.generate(PROMPTS, params)]
    for concurrency in (1, len(PROMPTS)):
        start = time.perf_counter()
        probe = measure_latency(gen, PROMPTS, params, samples=len(PROMPTS), concurrency=concurrency, seed=0)
        wall = time.perf_counter() - start
        assert [g.text for g in probe.generations] == [expected[i] for i in probe.indices]
        overlap = sum(probe.latencies_s) / wall
        if concurrency == 1:  # closed loop, one client: requests never overlap
            assert overlap <= 1.0
        else:  # all in flight together, decoded in one batch
            assert overlap > 1.5
    assert sample_rows(100, 5, seed=3) == sample_rows(100, 5, seed=3) != sample_rows(100, 5, seed=4)
    assert sample_rows(3, 5, seed=0) == [0, 1, 2]


def test_cancelled_submissions_leave_the_batch(gen: Generator) -> None:
    with BatchScheduler(gen) as scheduler:
        long = [scheduler.submit(p, GenerationParams(max_new_tokens=400), stream=True) for p in PROMPTS[:3]]
        short = scheduler.submit(PROMPTS[3], GenerationParams(max_new_tokens=8))
        first = next(iter(long[0]))  # decoding has started
        for job in long:
            job.cancel()
        assert short.result(timeout=60).completion_tokens == 8
    assert first
    for job in long:
        with pytest.raises(CancelledError):
            job.result()
        assert job.request.completion_tokens < 400


def test_bf16_copy_leaves_the_callers_model_alone(model: Any, tokenizer: Any, gen: Generator) -> None:
    fast = Generator(model, tokenizer, dtype="bf16")
    assert fast.model is not model and next(fast.model.parameters()).dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert fast.model.get_input_embeddings().weight is fast.model.get_output_embeddings().weight  # still tied
    outs = fast.generate(PROMPTS, GenerationParams(max_new_tokens=8))
    assert all(o.completion_tokens == 8 for o in outs)
    assert model.config._attn_implementation == gen.model.config._attn_implementation != "tunekit_gqa"


def test_bad_params_are_user_errors(gen: Generator) -> None:
    for bad in (GenerationParams(max_new_tokens=0), GenerationParams(temperature=-0.5),
                GenerationParams(top_p=0.0), GenerationParams(stop=(3,))):  # type: ignore[arg-type]
        with pytest.raises(UserError):
            gen.generate(PROMPTS[:1], bad)
    with pytest.raises(UserError, match="dtype"):
        Generator(gen.model, gen.tokenizer, dtype="int4")
    with pytest.raises(UserError, match="no adapters"):
        gen.generate(PROMPTS[:1], adapter="x")


def test_hostile_sampling_values_are_normalised_not_fatal(gen: Generator) -> None:
    # A seed past 64 bits overflowed torch's seeding, and temperature 1e-300 gave NaN probabilities: both
    # inside a batch step, failing every request in the batch. Now they are reduced before a row is made.
    huge, tiny = GenerationParams(max_new_tokens=8, temperature=1.0, seed=2**70), GenerationParams(
        max_new_tokens=8, temperature=1e-300, seed=1)
    assert check_params(huge).seed == 2**70 % 2**64 and check_params(tiny).temperature == 0.0
    same_seed = GenerationParams(max_new_tokens=8, temperature=1.0, seed=2**70 % 2**64)
    assert gen.generate(PROMPTS[:2], huge)[1].text == gen.generate(PROMPTS[:2], same_seed)[1].text
    greedy = gen.generate(PROMPTS[:2], GenerationParams(max_new_tokens=8))
    assert [o.text for o in gen.generate(PROMPTS[:2], tiny)] == [o.text for o in greedy]
    for bad in (GenerationParams(seed="7"), GenerationParams(seed=True)):  # type: ignore[arg-type]
        with pytest.raises(UserError, match="seed"):
            gen.generate(PROMPTS[:1], bad)


def test_a_row_that_fails_in_a_step_fails_alone(gen: Generator) -> None:
    # Parameters that slipped past validation (here set after it, as a bug would) make one row's sampling
    # raise; its batch neighbours decode on, token for token as they would alone.
    params = GenerationParams(max_new_tokens=10)
    expected = [o.text for o in gen.generate(PROMPTS[:3], params)]
    requests = [gen.request(p, params, None) for p in PROMPTS[:3]]
    requests[1].params = replace(requests[1].params, temperature=1e-300)
    with gen.decoding(None):
        runner = gen.runner()
        runner.add(requests)
        while runner.busy:
            runner.step()
    assert requests[1].error is not None and requests[1].result is None
    assert [requests[0].result.text, requests[2].result.text] == [expected[0], expected[2]]
    with BatchScheduler(gen) as scheduler:  # and the scheduler's thread carries on serving
        assert scheduler.submit(PROMPTS[0], params).result(timeout=60).text == expected[0]


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "mistral"])
def test_other_fast_path_architectures_equal_hf_generate(arch: str, tokenizer: Any) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(arch, vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                  max_position_embeddings=512, sliding_window=None,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = scrambled(AutoModelForCausalLM.from_config(config))
    gen = Generator(model, tokenizer, dtype="fp32")
    assert not gen.uses_fallback(None)
    outs = gen.generate(PROMPTS, GenerationParams(max_new_tokens=12))
    assert [o.text for o in outs] == [hf_text(model, tokenizer, gen.render(p), 12) for p in PROMPTS]


@pytest.mark.slow
def test_smollm2_greedy_fp32_equals_hf_generate(smollm2_dir: Path) -> None:
    from tunekit.models.load import load_chat_tokenizer, load_model
    from tunekit.models.resolve import resolve_model

    resolved = resolve_model(str(smollm2_dir))
    tokenizer, model = load_chat_tokenizer(resolved), load_model(resolved).eval()
    questions = ["What is the capital of France?", "Write a haiku about autumn.",
                 "Explain in two sentences what a KV cache is.", "List three prime numbers."]
    prompts = [[{"role": "user", "content": q}] for q in questions]
    gen = Generator(model, tokenizer, dtype="fp32")
    outs = gen.generate(prompts, GenerationParams(max_new_tokens=32))
    eos = sorted(gen.eos_ids)
    assert [o.text for o in outs] == [hf_text(model, tokenizer, gen.render(p), 32, eos_token_id=eos) for p in prompts]
    assert "Paris" in outs[0].text
