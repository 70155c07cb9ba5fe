"""Quantized export: base + adapter merged, written as one GGUF file for llama.cpp-family runtimes.

``loraplex adapters export VERSION --merged DIR --quantize q8_0`` merges the adapter into its base
in float32 (:func:`services.server.importer.merge_fp32`) and writes ``DIR/model-q8_0.gguf``, with
``DIR/model-q8_0.gguf.lineage.json`` next to it (source version, adapter and base hashes, the
quantization, the file's own sha256). The source version and adapter hash are also GGUF metadata
(``general.source.version``, ``general.source.adapter_sha256``), so the file names its origin
after it is separated from the JSON.

A full fine-tune (``kind: full``) has nothing to merge: its own folder is loaded in float32 and
converted, with its own tokenizer files; its lineage and metadata name its kind and its folder's
hash (``general.source.kind``, ``general.source.sha256``) instead of an adapter's.

Tensor names and metadata keys follow llama.cpp's ``convert_hf_to_gguf.py`` for the Llama
architecture, including its permutation of the q and k projections (llama.cpp applies rotary
embeddings to interleaved pairs, transformers to two halves; readers undo the permutation).
Linear layers take the requested type; norms stay F32; the token embedding (which SmolLM2 ties to
the output head) is Q8_0 for every type, as llama.cpp keeps the output head at 6 bits or more and
gguf's Python quantizer has no K-quants. Rows whose length is not a multiple of the block size
fall back to F16.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from shared.artifacts import ArtifactStore
from shared.errors import ConflictError, ValidationError
from shared.registry.db import Registry
from shared.registry.versions import FULL_KIND, LORA_KIND
from shared.settings import SharedSettings

log = logging.getLogger(__name__)

# Types gguf's Python package can quantize, by the names llama.cpp's tools use.
QUANT_TYPES = ("q8_0", "q4_0")
EMBEDDING_TYPE = "Q8_0"
LINEAR = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
NORMS = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED = 1, 3, 4


def check_quant_type(quantize: str) -> str:
    """``quantize`` lower-cased if it is one this export writes; a ValidationError listing them."""
    name = quantize.lower()
    if name not in QUANT_TYPES:
        raise ValidationError(
            f"unknown quantization {quantize!r}; valid: {', '.join(QUANT_TYPES)}",
            param="quantize",
        )
    return name


def gguf_name(quantize: str) -> str:
    return f"model-{check_quant_type(quantize)}.gguf"


def permute_qk(weights: Any, n_head: int) -> Any:
    """llama.cpp's ``LlamaModel.permute``: each head's rows from halves to interleaved pairs."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _tokenizer_metadata(tokenizer_dir: Path) -> dict[str, Any]:
    """Vocabulary, token types and merges of a byte-level BPE ``tokenizer.json``, as llama.cpp's
    ``gpt2`` tokenizer model stores them; special added tokens are CONTROL."""
    data = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    model = data["model"]
    if model.get("type") != "BPE" or (data.get("decoder") or {}).get("type") != "ByteLevel":
        raise ValidationError(
            "GGUF export supports byte-level BPE tokenizers only", param="base_model"
        )
    by_id: dict[int, str] = {int(i): tok for tok, i in model["vocab"].items()}
    types = dict.fromkeys(by_id, TOKEN_NORMAL)
    for added in data.get("added_tokens") or []:
        by_id[int(added["id"])] = added["content"]
        types[int(added["id"])] = TOKEN_CONTROL if added.get("special") else TOKEN_USER_DEFINED
    if sorted(by_id) != list(range(len(by_id))):
        raise ValidationError("tokenizer ids are not contiguous", param="base_model")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return {
        "tokens": [by_id[i] for i in range(len(by_id))],
        "types": [types[i] for i in range(len(by_id))],
        "merges": merges,
    }


def _source_pre_tokenizer(base_path: Path) -> str:
    """llama.cpp's pre-tokenizer name: the one in the GGUF the base was prepared from, if any."""
    import gguf

    from shared.basemodel import gguf_path

    marker = base_path / "loraplex_model.json"
    info = json.loads(marker.read_text()) if marker.exists() else {}
    source = str(info.get("source", ""))
    if source.startswith("gguf:"):
        path = gguf_path()
        if path.name == source.removeprefix("gguf:"):
            field = gguf.GGUFReader(str(path)).get_field("tokenizer.ggml.pre")
            if field is not None:
                return str(field.contents())
    return "default"


def write_gguf(
    merged: Any,
    tokenizer_dir: Path,
    path: Path,
    quantize: str,
    metadata: dict[str, str],
    *,
    permute: bool = True,
    pre_tokenizer: str | None = None,
) -> Counter[str]:
    """Write ``merged`` (a transformers Llama model) and the tokenizer in ``tokenizer_dir`` to
    ``path`` as GGUF; ``metadata``: extra string keys. Returns the count of tensors per type.
    ``pre_tokenizer``: llama.cpp's name for it, when ``tokenizer_dir`` is not the base's folder.

    ``permute=False`` skips the q/k permutation: only for tests showing that it matters."""
    import gguf
    import numpy as np
    from gguf.quants import quantize as quantize_array

    qname = check_quant_type(quantize)
    config = merged.config
    if config.model_type != "llama":
        raise ValidationError(
            f"GGUF export supports Llama-architecture bases, not {config.model_type!r}",
            param="base_model",
        )
    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    if rope.get("rope_type", "default") != "default":
        raise ValidationError(
            f"GGUF export does not write rope scaling {rope['rope_type']!r}", param="base_model"
        )
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    tok = _tokenizer_metadata(tokenizer_dir)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_type("model")
    writer.add_name(metadata.get("general.source.version", "loraplex export"))
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(float(theta))
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(
        gguf.LlamaFileType.MOSTLY_Q8_0 if qname == "q8_0" else gguf.LlamaFileType.MOSTLY_Q4_0
    )
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer or _source_pre_tokenizer(tokenizer_dir))
    writer.add_token_list(tok["tokens"])
    writer.add_token_types(tok["types"])
    writer.add_token_merges(tok["merges"])
    for key, set_id in (
        ("bos_token_id", writer.add_bos_token_id),
        ("eos_token_id", writer.add_eos_token_id),
        ("unk_token_id", writer.add_unk_token_id),
        ("pad_token_id", writer.add_pad_token_id),
    ):
        value = getattr(config, key, None)
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            set_id(int(value))
    writer.add_add_bos_token(False)
    template = tokenizer_dir / "chat_template.jinja"
    if template.exists():
        writer.add_chat_template(template.read_text())
    for key, value in metadata.items():
        writer.add_string(key, value)

    counts: Counter[str] = Counter()

    def add(name: str, tensor: Any, qtype: str) -> None:
        data = tensor.detach().to("cpu").float().numpy()
        block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]][0] if qtype else 1
        if data.ndim == 1 or not qtype:
            data, qtype = data.astype(np.float32), "F32"
        elif data.shape[-1] % block:
            data, qtype = data.astype(np.float16), "F16"
        else:
            kind = gguf.GGMLQuantizationType[qtype]
            writer.add_tensor(name, quantize_array(data, kind), raw_dtype=kind)
            counts[qtype] += 1
            return
        writer.add_tensor(name, data)
        counts[qtype] += 1

    state = merged.state_dict()
    add("token_embd.weight", state["model.embed_tokens.weight"], EMBEDDING_TYPE)
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}."
        for hf, short in LINEAR.items():
            weight = state[f"{prefix}{hf}.weight"]
            if permute and short in ("attn_q", "attn_k"):
                weight = permute_qk(weight, n_head if short == "attn_q" else n_kv)
            add(f"blk.{i}.{short}.weight", weight, qname.upper())
        for hf, short in NORMS.items():
            add(f"blk.{i}.{short}.weight", state[f"{prefix}{hf}.weight"], "")
    add("output_norm.weight", state["model.norm.weight"], "")
    if not config.tie_word_embeddings:
        add("output.weight", state["lm_head.weight"], EMBEDDING_TYPE)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return counts


def _same_tokenizer(folder: Path, base_path: Path) -> bool:
    theirs, ours = folder / "tokenizer.json", base_path / "tokenizer.json"
    return theirs.is_file() and ours.is_file() and file_sha256(theirs) == file_sha256(ours)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_gguf(
    settings: SharedSettings,
    registry: Registry,
    store: ArtifactStore,
    model: str,
    out: Path,
    quantize: str,
    *,
    force: bool = False,
) -> Path:
    """Write ``out/model-<quantize>.gguf`` and its ``.lineage.json``; returns the GGUF's path.

    Both are written under temporary names and renamed at the end, so a failed export leaves
    nothing behind; an existing file is replaced only with ``force``."""
    from services.server.importer import is_full_version, merge_fp32

    qname = check_quant_type(quantize)
    target = out / gguf_name(qname)
    lineage_path = target.with_name(target.name + ".lineage.json")
    if target.exists() and not force:
        raise ConflictError(f"{target} exists; pass --force", param="out")
    version, base, merged = merge_fp32(settings, registry, store, model)
    full = is_full_version(version)
    kind = FULL_KIND if full else LORA_KIND
    # A full model reads prompts with the tokenizer stored beside its weights; the pre-tokenizer
    # name comes from its base when that tokenizer is the base's own.
    tokenizer_dir = store.get_dir(version.sha256) if full else base.path
    pre = _source_pre_tokenizer(base.path) if _same_tokenizer(tokenizer_dir, base.path) else None
    out.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp_lineage = lineage_path.with_name(f".{lineage_path.name}.tmp")
    metadata = {
        "general.source.version": version.id,
        "general.source.kind": kind,
        "general.source.sha256": version.sha256,
        "general.source.base_model": base.name,
        "general.source.base_model_sha256": version.base_model_sha256,
    }
    if not full:
        metadata["general.source.adapter_sha256"] = version.sha256
    try:
        start = time.perf_counter()
        counts = write_gguf(merged, tokenizer_dir, tmp, qname, metadata, pre_tokenizer=pre)
        lineage: dict[str, Any] = {
            "format": "gguf",
            "file": target.name,
            "quantization": qname,
            "tensor_types": dict(counts),
            "source_version": version.id,
            "kind": kind,
            "source_sha256": version.sha256,
            **({} if full else {"adapter_sha256": version.sha256}),
            "base_model": base.name,
            "base_model_sha256": version.base_model_sha256,
            "file_sha256": file_sha256(tmp),
            "size_bytes": tmp.stat().st_size,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        tmp_lineage.write_text(json.dumps(lineage, indent=2) + "\n")
        tmp_lineage.replace(lineage_path)
        tmp.replace(target)
    except BaseException:
        for leftover in (tmp, tmp_lineage):
            leftover.unlink(missing_ok=True)
        if not target.exists():
            lineage_path.unlink(missing_ok=True)
        raise
    log.info(
        "exported %s as %s (%s, %.1f MB) in %.0fs",
        version.id,
        target,
        qname,
        lineage["size_bytes"] / 1e6,
        time.perf_counter() - start,
    )
    return target
