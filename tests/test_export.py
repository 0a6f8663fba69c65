"""`tunekit export`: GGUF files llama.cpp and Ollama run, proven to answer like the fine-tune they came from."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import run_in_process as cli
from train_helpers import make_project, run_in_process
from tunekit.export.gguf_model import permute_rotary, unpermute_rotary, write_model
from tunekit.export.modelfile import CHATML_GO, build_modelfile, chat_layout
from tunekit.export.proof import exported_gguf, load_gguf, weight_error
from tunekit.export.quants import QUANTS, get_quant
from tunekit.export.vocab import read_vocab

LIVELY_SCALE = 5.0
# Worst relative weight error each type may give back on the tiny model (measured well below these).
WEIGHT_ERROR = {"f32": 0.0, "f16": 1e-3, "bf16": 1e-2, "q8_0": 1e-2, "q5_1": 0.05, "q5_0": 0.06, "q4_1": 0.1,
                "q4_0": 0.12}
LLAMA3_TEMPLATE = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}"
                   "<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>"
                   "\n\n{% endif %}")
# Ollama's Modelfile reference: instructions and the PARAMETER names it documents.
MODELFILE_INSTRUCTIONS = {"FROM", "PARAMETER", "TEMPLATE", "SYSTEM", "ADAPTER", "LICENSE", "MESSAGE", "REQUIRES"}
MODELFILE_PARAMETERS = {"num_ctx", "repeat_last_n", "repeat_penalty", "temperature", "seed", "stop", "num_predict",
                        "top_k", "top_p", "min_p"}


@pytest.fixture(scope="module")
def lively_model_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model with its layers' weights 5x larger. At the usual init it repeats the prompt's last token
    whatever the weights, so a broken export would answer the same; at this scale its answers depend on every
    weight (f16 still gives back its first tokens exactly, q8_0 already does not)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.ndim == 2 and "embed" not in name:
                weight.mul_(LIVELY_SCALE)
    out = tmp_path_factory.mktemp("lively")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, lively_model_dir) -> Path:
    root = tmp_path_factory.mktemp("export")
    run_in_process(make_project(root, lively_model_dir, n=60), "training.max_steps=2", "training.eval_every=2")
    return root / "run"


@pytest.fixture(scope="module")
def tiny(lively_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(lively_model_dir).eval(),
            AutoTokenizer.from_pretrained(lively_model_dir))


def read_gguf(path: Path) -> tuple[dict, dict]:
    import gguf

    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    return fields, {t.name: t for t in reader.tensors}


def test_export_of_a_lora_run_writes_the_model_adapter_modelfile_and_proof(lora_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    code, text = cli(monkeypatch, capsys, "export", lora_run, "--format", "gguf", "--quant", "f16", "--out", out,
                     "--max-new-tokens", "8")  # a short answer: this tiny model is chaotic, a long one is not
    assert code in (0, None), text
    assert "identical to the merged model's" in text and "Traceback" not in text
    report = json.loads((out / "export_report.json").read_text())
    proof = report["proof"]
    assert proof["passed"] and proof["identical"] == proof["prompts"] > 1
    assert proof["prompt_tokens_identical"] == proof["prompts"]  # the file's tokenizer and template, read back
    assert 0 < proof["weight_rel_error"] < 1e-3
    assert 0.9 < proof["update_kept"] < 1.1, proof  # f16 keeps the fine-tune's change of the weights
    assert report["tensor_types"] == {"F32": 5, "F16": 15}  # norms stay F32; the tied output layer is token_embd
    assert "passed" in (out / "export_report.md").read_text()
    fields, tensors = read_gguf(out / report["file"])
    tokenizer = run_tokenizer(lora_run)
    assert fields["general.architecture"] == "llama" and fields["general.type"] == "model"
    assert fields["tokenizer.chat_template"] == tokenizer.chat_template
    assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id == fields["tokenizer.ggml.eot_token_id"]
    assert fields["tokenizer.ggml.padding_token_id"] == tokenizer.pad_token_id != tokenizer.eos_token_id
    assert fields["general.sampling.temp"] == 0.0  # greedy: how tunekit's eval measured the fine-tune
    assert len(fields["tokenizer.ggml.tokens"]) == fields["llama.vocab_size"] == len(tokenizer)
    assert tensors["blk.0.attn_q.weight"].data.shape == (64, 64)
    adapter = report["adapter"]
    assert adapter["written"] and adapter["modules"] == 14 and adapter["max_rel_error"] < 1e-5
    fields, tensors = read_gguf(out / adapter["file"])
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == 32.0
    assert tensors["blk.1.ffn_down.weight.lora_a"].data.shape == (16, 128)  # r x in
    assert tensors["blk.1.ffn_down.weight.lora_b"].data.shape == (64, 16)  # out x r
    assert exported_gguf(out) == exported_gguf(out / report["file"]) == out / report["file"]
    assert exported_gguf(lora_run) is None
    modelfile = (out / "Modelfile").read_text()
    assert f"FROM ./{report['file']}\n" in modelfile and "ADAPTER ./tunekit-project-lora.gguf" in modelfile
    check_modelfile_syntax(modelfile)


def run_tokenizer(run: Path):
    from tunekit.runfolder import RunFolder

    return RunFolder(run).tokenizer()


def test_an_export_that_answers_differently_fails_with_exit_1(lora_run, tmp_path, monkeypatch, capsys):
    import tunekit.export.gguf_model as gguf_model

    real = gguf_model.qk_to_gguf

    def broken(hf_name, data, config):  # a writer that forgot the MLP's sign: the file no longer answers the same
        return -data if ".mlp.down_proj." in hf_name else real(hf_name, data, config)

    monkeypatch.setattr(gguf_model, "qk_to_gguf", broken)
    out = tmp_path / "out"
    code, text = cli(monkeypatch, capsys, "export", lora_run, "--quant", "f16", "--out", out, "--prompts", "4",
                     "--max-new-tokens", "8")
    assert code == 1, text
    assert "answers differently" in text and "Traceback" not in text
    report = json.loads((out / "export_report.json").read_text())
    assert not report["proof"]["passed"] and report["proof"]["mismatches"]
    assert "FAILED" in (out / "export_report.md").read_text()


@pytest.mark.parametrize("quant", ["q4_k_m", "q6_k"])
def test_k_quants_point_to_llama_quantize(tmp_path, monkeypatch, capsys, quant):
    code, text = cli(monkeypatch, capsys, "export", tmp_path / "no-run", "--quant", quant)
    assert code == 2 and "llama-quantize" in text and "Traceback" not in text


def test_an_output_folder_that_is_not_an_export_is_never_replaced(tmp_path, monkeypatch, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    code, text = cli(monkeypatch, capsys, "export", tmp_path / "no-run", "--out", tmp_path)
    assert code == 2 and "not an earlier export" in text and (tmp_path / "notes.txt").is_file()


def test_unknown_format_and_type_are_user_errors(tmp_path, monkeypatch, capsys):
    code, text = cli(monkeypatch, capsys, "export", tmp_path, "--format", "onnx")
    assert code == 2 and "--format" in text
    code, text = cli(monkeypatch, capsys, "export", tmp_path, "--quant", "q3")
    assert code == 2 and "f16" in text and "Traceback" not in text


@pytest.mark.parametrize("quant", list(QUANTS))
def test_every_type_reads_back_as_the_weights_it_was_written_from(tiny, tmp_path, quant):
    model, tokenizer = tiny
    written = write_model(tmp_path / "m.gguf", model, read_vocab(tokenizer, model.config.vocab_size),
                          get_quant(quant), {"name": "tiny"}, {"temp": 0.0})
    spec = QUANTS[quant]
    # 5 norms, 14 layer weights, token_embd (which is also the tied output layer)
    assert written.tensor_types == dict(Counter(["F32"] * 5 + [spec.layers] * 14 + [spec.embeddings]))
    reloaded, _ = load_gguf(written.path)
    error, _ = weight_error(model, reloaded)
    assert error <= WEIGHT_ERROR[quant]


def test_q_and_k_rows_are_written_in_llama_cpp_order(tiny, tmp_path):
    model, tokenizer = tiny
    write_model(tmp_path / "m.gguf", model, read_vocab(tokenizer, model.config.vocab_size), get_quant("f32"), {}, {})
    _, tensors = read_gguf(tmp_path / "m.gguf")
    q = model.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    k = model.model.layers[0].self_attn.k_proj.weight.detach().numpy()
    assert np.array_equal(tensors["blk.0.attn_q.weight"].data, permute_rotary(q, 4))
    assert np.array_equal(tensors["blk.0.attn_k.weight"].data, permute_rotary(k, 2))
    assert not np.array_equal(permute_rotary(q, 4), q)
    assert np.array_equal(unpermute_rotary(permute_rotary(q, 4), 4), q)


def test_chatml_template_becomes_ollama_chatml_with_its_default_system_prompt(tiny):
    _, tokenizer = tiny
    layout = chat_layout(tokenizer)
    assert layout.chatml and layout.default_system.startswith("You are a helpful AI assistant named SmolLM")
    modelfile = build_modelfile("m.gguf", tokenizer, None, {"temp": 0.0})
    assert f'TEMPLATE """{CHATML_GO}"""' in modelfile.text
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in modelfile.text
    assert 'PARAMETER stop "<|im_end|>"' in modelfile.text and "PARAMETER temperature 0\n" in modelfile.text
    project = build_modelfile("m.gguf", tokenizer, 'Reply with JSON: {"label": ...}', {"temp": 0.0})
    assert 'SYSTEM """Reply with JSON: {"label": ...}"""' in project.text
    check_modelfile_syntax(project.text)


def test_other_templates_are_left_to_ollama(tiny):
    _, tokenizer = tiny
    original = tokenizer.chat_template
    try:
        tokenizer.chat_template = LLAMA3_TEMPLATE
        assert not chat_layout(tokenizer).chatml
        modelfile = build_modelfile("m.gguf", tokenizer, "Be brief.", {"temp": 0.7, "top_p": 0.9})
    finally:
        tokenizer.chat_template = original
    assert "\nTEMPLATE" not in modelfile.text and modelfile.warnings
    assert "PARAMETER temperature 0.7" in modelfile.text and "PARAMETER top_p 0.9" in modelfile.text
    check_modelfile_syntax(modelfile.text)


def check_modelfile_syntax(text: str) -> None:
    """Every line a comment or a documented instruction; strings in triple quotes closed; parameters known."""
    body = re.sub(r'"""(.*?)"""', "STRING", text, flags=re.DOTALL)
    assert '"""' not in body
    for line in body.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        assert instruction.upper() in MODELFILE_INSTRUCTIONS and args, line
        if instruction == "PARAMETER":
            name, _, value = args.partition(" ")
            assert name in MODELFILE_PARAMETERS and value, line
            if name == "stop":
                assert re.fullmatch(r'"[^"]+"', value), line
    assert body.splitlines()[2].startswith("FROM ./")


def test_rslora_and_per_module_ranks_are_folded_into_the_adapter_file(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunekit.export.lora import unsupported_reason, write_adapter

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=8, lora_alpha=16, use_rslora=True, rank_pattern={"v_proj": 4}, alpha_pattern={"o_proj": 3},
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False)
    model = get_peft_model(base, config)
    assert unsupported_reason(model) is None
    written = write_adapter(tmp_path / "a.gguf", model, {"name": "t"})
    assert written.modules == 8 and written.max_rel_error < 1e-5


@pytest.mark.parametrize("config", ["dora", "ia3"])
def test_adapters_without_a_llama_cpp_format_are_named(tiny_model_dir, config):
    from peft import IA3Config, LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunekit.export.lora import unsupported_reason

    peft_config = (LoraConfig(r=4, use_dora=True, target_modules=["q_proj"]) if config == "dora"
                   else IA3Config(target_modules=["q_proj", "down_proj"], feedforward_modules=["down_proj"]))
    reason = unsupported_reason(get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), peft_config))
    assert reason and ("DoRA" in reason if config == "dora" else "IA3" in reason)


def test_prompt_tuning_cannot_be_folded_into_weights(tiny_model_dir, lora_run):
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunekit.errors import UserError
    from tunekit.models.runs import LoadedRun
    from tunekit.runfolder import RunFolder
    from tunekit.train.merge import fold_adapter

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    cfg = RunFolder(lora_run).config(["method.name=prompt"])
    with pytest.raises(UserError, match="virtual tokens"):
        fold_adapter(LoadedRun(lora_run, cfg, model, None, "adapter"))


@pytest.mark.slow
def test_reexporting_the_embedded_smollm2_gives_back_the_shipped_file(smollm2_dir, tmp_path):
    """The embedded model's safetensors came from the shipped Q4_1 GGUF; written back as q4_1 they are that file
    again: same tensors (names, shapes, types, every byte: the q/k permutation, the names and tunekit's choice of
    Q8_0 for token_embd all match llama.cpp's) and the same model and tokenizer metadata."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunekit.models.resolve import embedded_gguf

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    vocab = read_vocab(tokenizer, model.config.vocab_size)
    written = write_model(tmp_path / "smollm2.gguf", model, vocab, get_quant("q4_1"), {"name": "re-export"}, {})
    shipped_fields, shipped = read_gguf(embedded_gguf())
    fields, tensors = read_gguf(written.path)
    assert list(tensors) and set(tensors) == set(shipped)
    for name, tensor in shipped.items():
        mine = tensors[name]
        assert (mine.tensor_type, list(mine.shape)) == (tensor.tensor_type, list(tensor.shape)), name
        assert np.array_equal(np.asarray(mine.data), np.asarray(tensor.data)), name
    assert vocab.pre == "smollm"
    for key in sorted(set(shipped_fields) - {"general.name"}):
        if key.startswith(("llama.", "tokenizer.")) or key in ("general.architecture", "general.file_type"):
            assert fields[key] == shipped_fields[key], key


LLAMA_PROMPTS = ["What is the capital of France?", "Name three primary colors.", "Write one sentence about the sea.",
                 "How many legs does a spider have?"]


@pytest.mark.slow
def test_llama_cpp_runs_the_exported_model_and_adapter_and_answers_like_tunekit(smollm2_dir, tmp_path):
    """The files in llama.cpp itself: its tokenizer (the `smollm` pre-tokenizer, special tokens) encodes the
    prompts as tunekit does, and its greedy answers from the model, and from the model with the LoRA adapter file,
    match tunekit's engine on the same weights."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunekit.export.lora import write_adapter
    from tunekit.export.proof import greedy_answers

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    prompts = [[{"role": "user", "content": p}] for p in LLAMA_PROMPTS]
    base = write_model(tmp_path / "base.gguf", model, read_vocab(tokenizer, model.config.vocab_size),
                       get_quant("f16"), {"name": "smollm2"}, {}).path
    plain = greedy_answers(model, tokenizer, prompts, 16)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
    with torch.no_grad():  # a visible but gentle update: PEFT's non-default init alone would wreck the model
        for name, weight in peft.named_parameters():
            if "lora_B" in name:
                weight.mul_(0.05)
    adapter = write_adapter(tmp_path / "lora.gguf", peft, {"name": "lora"}).path
    adapted = greedy_answers(peft, tokenizer, prompts, 16)
    assert adapted != plain  # the adapter changes answers, so agreeing below means it was applied right
    for lora, expected in ((None, plain), (adapter, adapted)):
        llm = llama_cpp.Llama(model_path=str(base), lora_path=str(lora) if lora else None, n_ctx=512, seed=0,
                              verbose=False)
        try:
            got = [_llama_answer(llm, tokenizer, p) for p in prompts]
        finally:
            llm.close()
        assert sum(a.strip() == b.strip() for a, b in zip(got, expected)) >= len(prompts) - 1, (got, expected)


def _llama_answer(llm, tokenizer, messages) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
    out = llm.create_completion(ids, max_tokens=16, temperature=0.0, top_k=1, repeat_penalty=1.0)
    return out["choices"][0]["text"]


def test_eval_compares_an_exported_gguf_with_the_fine_tune(lora_run, monkeypatch, capsys):
    # What quantization cost, on the fixed test set: the export is one more candidate (issue #21).
    out = lora_run.parent / "exports" / "f16"
    code, text = cli(monkeypatch, capsys, "export", lora_run, "--quant", "f16", "--out", out, "--max-new-tokens", "8")
    assert code in (0, None), text
    config = lora_run.parent / "tunekit.yaml"
    code, text = cli(monkeypatch, capsys, "eval", config, "eval.candidates=[finetuned, f16]",
                     f"eval.compare={{f16: {out}}}", "eval.metrics=[exact_match]", "eval.max_new_tokens=8",
                     "eval.latency.samples=2", "eval.constrained=false")
    assert code in (0, 1, None), text
    result = json.loads((lora_run / "eval" / "eval.json").read_text())
    by_name = {c["name"]: c for c in result["candidates"]}
    assert by_name["f16"]["status"] == "ok" and by_name["f16"]["model"].endswith(".gguf")
    predictions = [[json.loads(line)["prediction"] for line in (lora_run / "eval" / "predictions" / f"{name}.jsonl")
                    .read_text().splitlines()] for name in ("finetuned", "f16")]
    # This model is chaotic on purpose (lively_model_dir), so f16 rounding may flip a late token on a row or two.
    same = sum(a == b for a, b in zip(*predictions))
    assert same >= 0.75 * len(predictions[0]), (same, len(predictions[0]))
