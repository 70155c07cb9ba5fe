"""Server: an OpenAI-compatible front for vLLM engines serving many LoRA adapters."""
