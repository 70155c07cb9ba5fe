"""Load a trained adapter into vLLM (offline engine) and generate with it; prints VLLM_OK.

Run as a script: vLLM's engine spawns processes, so it must start under ``__main__``.
Usage: ``python tests/trainer/recipes/vllm_adapter_check.py BASE_DIR ADAPTER_DIR``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    base, adapter = sys.argv[1], sys.argv[2]
    llm = LLM(model=base, enable_lora=True, max_lora_rank=16, max_loras=1, max_model_len=512)
    messages: Any = [{"role": "user", "content": "Ana Diaz from Oslo wants 2 red mugs."}]
    params = SamplingParams(max_tokens=24, temperature=0)
    with_adapter = llm.chat(messages, params, lora_request=LoRARequest("trained", 1, adapter))
    print("VLLM_OK " + json.dumps({"text": with_adapter[0].outputs[0].text}), flush=True)
