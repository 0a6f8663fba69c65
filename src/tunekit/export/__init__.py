"""Export a run to where people run models: GGUF for llama.cpp, Ollama and LM Studio.

Modules, bottom up: `quants` (the types the `gguf` package writes, and the tolerance each declares) ->
`vocab` (the tokenizer as GGUF metadata) -> `gguf_model` (the merged model as one GGUF file), `lora` (a LoRA
adapter as a llama.cpp `--lora` file) -> `modelfile` (Ollama) -> `proof` (load the file back, answer the run's
validation prompts, compare) -> `report` -> `runner` (`export_gguf`: all of it for one run).
"""
