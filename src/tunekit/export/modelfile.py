"""An Ollama Modelfile beside the GGUF, in the syntax of Ollama's Modelfile reference (docs/modelfile.mdx).

The run's chat template is Jinja; Ollama's TEMPLATE is a Go template. Rather than translating Jinja, the
run's template is rendered on probe conversations: when it lays them out exactly as ChatML does, the
Modelfile gets ChatML in Go-template form (the layout Ollama's template docs give for ChatML), and a
default system prompt the Jinja template inserts when a conversation has none is recovered, so Ollama can
insert it the same way. Any other template is left to Ollama, which picks a template of its own from the
GGUF's tokenizer.chat_template.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CHATML_GO = ("{{- range .Messages }}" + IM_START + "{{ .Role }}\n{{ .Content }}" + IM_END + "\n{{ end }}"
             + IM_START + "assistant\n")
PROBE = [{"role": "system", "content": "S1"}, {"role": "user", "content": "U1"},
         {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"}]
PARAMETER_NAMES = {"temp": "temperature", "top_p": "top_p", "top_k": "top_k"}


@dataclass
class ChatLayout:
    chatml: bool
    default_system: str | None = None  # what the template says as system when a conversation has none


@dataclass
class Modelfile:
    text: str
    template: str  # "chatml" | "left to Ollama"
    warnings: list[str] = field(default_factory=list)


def chat_layout(tokenizer: Any) -> ChatLayout:
    """Whether the tokenizer's chat template is ChatML, found by rendering probe conversations through it."""
    if not getattr(tokenizer, "chat_template", None):
        return ChatLayout(False)
    try:
        full = tokenizer.apply_chat_template(PROBE, tokenize=False, add_generation_prompt=True)
        bare = tokenizer.apply_chat_template(PROBE[1:2], tokenize=False, add_generation_prompt=True)
    except Exception:  # a template that cannot render the probe is not ChatML, whatever it is
        return ChatLayout(False)
    if full != chatml(PROBE) + IM_START + "assistant\n":
        return ChatLayout(False)
    rest = chatml(PROBE[1:2]) + IM_START + "assistant\n"
    if bare == rest:
        return ChatLayout(True)
    default = re.fullmatch(re.escape(IM_START) + "system\n(.*?)" + re.escape(IM_END + "\n" + rest), bare, re.DOTALL)
    return ChatLayout(True, default.group(1)) if default else ChatLayout(False)


def chatml(messages: list[dict[str, str]]) -> str:
    return "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)


def build_modelfile(gguf_name: str, tokenizer: Any, system_prompt: str | None, sampling: dict[str, float],
                    adapter_name: str | None = None, base_gguf: str | None = None) -> Modelfile:
    layout = chat_layout(tokenizer)
    warnings: list[str] = []
    lines = ["# Ollama Modelfile written by `tunekit export`. Use it with:",
             "#   ollama create MODEL-NAME -f Modelfile && ollama run MODEL-NAME", f"FROM ./{gguf_name}"]
    if layout.chatml:
        lines.append(f'TEMPLATE """{CHATML_GO}"""')
    else:
        lines.append("# TEMPLATE left out: the chat template is not ChatML; Ollama picks one matching the GGUF's "
                     "tokenizer.chat_template")
        warnings.append("the chat template is not ChatML: the Modelfile has no TEMPLATE and Ollama chooses one")
    lines += [f'PARAMETER stop "{stop}"' for stop in _stops(tokenizer, layout)]
    lines += [f"PARAMETER {PARAMETER_NAMES[k]} {_number(v)}" for k, v in sampling.items() if k in PARAMETER_NAMES]
    system = system_prompt if system_prompt is not None else layout.default_system
    if system:
        if '"""' in system or system.endswith('"'):
            warnings.append('the system prompt has """ or ends with ", which a Modelfile string cannot hold: no SYSTEM')
        else:
            lines.append(f'SYSTEM """{system}"""')
    if adapter_name:
        lines += ["# The base model with the LoRA adapter instead of the merged weights:",
                  f"#   FROM {base_gguf or 'BASE-MODEL.gguf'}", f"#   ADAPTER ./{adapter_name}"]
    return Modelfile("\n".join(lines) + "\n", "chatml" if layout.chatml else "left to Ollama", warnings)


def _stops(tokenizer: Any, layout: ChatLayout) -> list[str]:
    if layout.chatml:
        return [IM_END, IM_START]  # end of a turn; the start of one the model should not write
    return [tokenizer.eos_token] if tokenizer.eos_token else []


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
