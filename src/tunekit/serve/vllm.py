"""`serve.engine: vllm`: vLLM's OpenAI server, started beside this one with the runs' adapters, decodes; this
server stays in front of it (serve/remote.py) with its guardrails, grounding, limits and log.

What tunekit checks before starting it, so that a run that cannot load fails here with a message rather than
minutes later inside vLLM: vLLM is installed and a CUDA GPU is present; every adapter is a plain LoRA (vLLM
loads neither DoRA nor IA3 nor prompt-learning adapters; QLoRA adapters are LoRA on the unquantized base).
Adapter folders are passed as `tunekit train` wrote them (PEFT format), each under its served name.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tunekit.errors import UserError
from tunekit.processes import free_port, signal_group, stop_when_parent_dies

START_TIMEOUT_S = 900.0  # loading weights and capturing CUDA graphs take minutes on a large model
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # what vLLM's --max-lora-rank accepts


def check_vllm_available() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise UserError("serve.engine=vllm needs vLLM, which is not installed here", where="serve.engine",
                        fix="on a machine with a CUDA GPU: pip install vllm; or serve with tunekit's own engine "
                            "(serve.engine=tunekit, the default), or point serve.engine_url at a running vLLM")
    import torch

    if not torch.cuda.is_available():
        raise UserError("serve.engine=vllm needs a CUDA GPU, and this machine has none", where="serve.engine",
                        fix="serve with tunekit's own engine (serve.engine=tunekit), or run vLLM on a GPU "
                            "machine and point serve.engine_url at it")


def lora_rank(adapter_dir: Path, name: str) -> int:
    """The adapter's rank, after checking that vLLM can load it."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    kind = "DoRA" if config.get("use_dora") else config.get("peft_type")
    if kind != "LORA":
        raise UserError(f"adapter '{name}' is {kind}; vLLM serves LoRA adapters only", where=str(adapter_dir),
                        fix="serve it with tunekit's own engine (serve.engine=tunekit), or train with "
                            "method.name=lora or qlora")
    return int(config.get("r") or 8)


def vllm_command(served: Any, host: str, port: int, extra: list[str]) -> list[str]:
    """`python -m vllm.entrypoints.openai.api_server ...` for what `served` (a loading.ServedModels without
    weights) names: a full run's model folder, or the base model with each adapter by its served name."""
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", host, "--port", str(port)]
    if served.full_run:
        name, run_dir = served.full_run
        from tunekit.runfolder import RunFolder

        folder = RunFolder(run_dir)
        return [*command, "--model", str(folder.model_dir), "--tokenizer", str(folder.tokenizer_dir),
                "--served-model-name", name, *extra]
    command += ["--model", str(served.base_path), "--served-model-name", served.base_name]
    if served.adapters:
        ranks = [lora_rank(a.adapter_dir, name) for name, a in served.adapters.items()]
        command += ["--enable-lora", "--max-loras", str(len(ranks)),
                    "--max-lora-rank", str(next((r for r in LORA_RANKS if r >= max(ranks)), max(ranks))),
                    "--lora-modules", *(f"{name}={a.adapter_dir}" for name, a in served.adapters.items())]
    return [*command, *extra]


class VllmProcess:
    """vLLM's server on a free loopback port, in its own process group so it stops with this server."""

    def __init__(self, command_for_port: Any, say: Any = print):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        command = command_for_port("127.0.0.1", self.port)
        say("starting vLLM: " + " ".join(command))
        # Dies with this server, even one killed with SIGKILL: an orphaned vLLM would hold the GPU.
        self.process = subprocess.Popen(command, start_new_session=True, preexec_fn=stop_when_parent_dies(),
                                        env={**os.environ, "VLLM_NO_USAGE_STATS": "1"})

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise UserError(f"vLLM exited with status {self.process.returncode} before it was ready",
                                where="serve.engine", fix="its output above says why (a GPU too small for the "
                                "model: serve.engine_args [--gpu-memory-utilization, '0.9', --max-model-len, ...])")
            try:
                if httpx.get(self.url.removesuffix("/v1") + "/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        self.stop()
        raise UserError(f"vLLM was not ready after {timeout_s:.0f} s", where="serve.engine")

    def stop(self) -> None:
        if self.process.poll() is None:
            signal_group(self.process, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                signal_group(self.process, signal.SIGKILL)
                self.process.wait()
