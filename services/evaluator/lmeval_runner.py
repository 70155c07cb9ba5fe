"""lm-eval tasks through its Python API, in-process (``hf`` + ``peft=``, or ``pretrained=`` the
version's folder for a full fine-tune) or against our server (``local-completions``), with
per-sample records turned into our item records.

* Shipped tasks live in ``tasks/*.yaml`` (local JSONL, ``dataset_path: json``, no hub). Their data
  is re-materialised per run from the run's items with the base model's own chat template, so the
  prompts are byte-identical to the ones our own generation uses; any other named lm-eval task
  runs too when its data is available offline.
* lm-eval's ``use_cache`` key ignores which model answered (lm-eval issue 2715): every subject gets
  its own cache file named by its full identity (base hash, adapter hash, backend, endpoint,
  generation settings). ``cache_requests`` stays off (its key ignores the data file's content).
* ``use_cache`` with ``num_concurrent > 1`` crashes on ``loglikelihood_rolling`` tasks (lm-eval PR
  4099), so perplexity tasks against a server run with one connection.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from services.evaluator.metrics import catalogue
from services.evaluator.results import ItemResult, SubjectResult
from services.evaluator.subjects import Subject
from services.evaluator.suite import TASKS_DIR
from shared.errors import NotFoundError, SystemFailure

log = logging.getLogger(__name__)

ITEM_TASKS = {"loraplex_extract_gen", "loraplex_extract_ppl"}
PPL_STATISTIC = {
    "word_perplexity": "perplexity",
    "byte_perplexity": "perplexity",
    "bits_per_byte": "bits_per_byte",
}


def shipped_tasks() -> dict[str, Path]:
    return {p.stem: p for p in sorted(TASKS_DIR.glob("*.yaml"))}


def _env() -> None:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def materialize_items(plan: Any, work: Path) -> tuple[Path, list[str]]:
    """Write the run's items as ``{"id", "prompt", "reference"}`` rows with the chat-templated
    prompt of the base model; returns the file and the template's stop tokens."""
    from transformers import AutoTokenizer

    from shared.datasets.render import ChatRenderer

    tok = AutoTokenizer.from_pretrained(str(plan.candidate.base.path))
    renderer = ChatRenderer(tok)
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"items-{plan.data.sha256[:16]}-{renderer.template_sha256[:12]}.jsonl"
    with path.open("w") as fh:
        for item in plan.items:
            prompt = (
                renderer.text(list(item.messages), add_generation_prompt=True)
                if item.messages
                else ""
            )
            fh.write(
                json.dumps(
                    {"id": item.item_id, "prompt": prompt, "reference": item.reference},
                    ensure_ascii=False,
                )
                + "\n"
            )
    return path, renderer.stop_tokens


def task_configs(plan: Any, names: list[str], work: Path) -> list[dict[str, Any] | str]:
    from lm_eval.tasks._yaml_loader import load_yaml

    shipped = shipped_tasks()
    items_file: Path | None = None
    stops: list[str] = []
    out: list[dict[str, Any] | str] = []
    for name in names:
        if name not in shipped:
            out.append(name)  # a registered lm-eval task; its data must be available offline
            continue
        cfg = load_yaml(shipped[name])
        files = cfg.setdefault("dataset_kwargs", {}).setdefault("data_files", {})
        if name in ITEM_TASKS:
            if items_file is None:
                items_file, stops = materialize_items(plan, work)
            files["test"] = str(items_file)
        else:
            files["test"] = str((shipped[name].parent / files["test"]).resolve())
        if cfg.get("output_type") == "generate_until":
            gen = dict(cfg.get("generation_kwargs") or {})
            gen["until"] = stops or gen.get("until", [])
            gen["max_gen_toks"] = plan.suite.generation.decoding.max_new_tokens
            cfg["generation_kwargs"] = gen
        out.append(cfg)
    return out


def model_args(plan: Any, subject: Subject, rolling: bool) -> tuple[str, dict[str, Any]]:
    part = plan.suite.lmeval
    if part.backend == "hf":
        # A full fine-tune is a model folder of its own; a LoRA version is applied on its base.
        full = subject.is_full and subject.adapter_path is not None
        args: dict[str, Any] = {
            "pretrained": str(subject.adapter_path if full else subject.base.path),
            "dtype": plan.suite.dtype,
            "device": "cpu",
        }
        if subject.adapter_path is not None and not full:
            args["peft"] = str(subject.adapter_path)
        return "hf", args
    if not plan.server_url:
        raise SystemFailure("lm-eval local-completions needs a server URL", param="server_url")
    base = plan.server_url.rstrip("/").removesuffix("/v1")
    return "local-completions", {
        "model": subject.served_name,
        "base_url": f"{base}/v1/completions",
        "tokenizer": str(subject.base.path),
        "tokenizer_backend": "huggingface",
        "tokenized_requests": True,
        "num_concurrent": 1 if rolling else part.num_concurrent,
        "max_retries": 3,
        "timeout": 300,
        "max_length": 2048,
        "max_gen_toks": plan.suite.generation.decoding.max_new_tokens,
    }


def _sample_value(value: Any) -> list[float] | float | None:
    if isinstance(value, list | tuple) and len(value) == 2:
        ll, count = value
        return [-float(ll), float(count)]  # (nll, words|bytes): a ratio statistic
    if isinstance(value, bool | int | float):
        return float(value)
    return None


def run_tasks(
    plan: Any, subject: Subject, result: SubjectResult, advance: Callable[[int], None]
) -> dict[str, Any]:
    _env()
    import lm_eval

    part = plan.suite.lmeval
    work = (plan.cache_dir or Path()) / "lmeval"
    configs = task_configs(plan, part.tasks, work / "data")
    rolling = any(
        isinstance(c, dict) and c.get("output_type") == "loglikelihood_rolling" for c in configs
    )
    backend, args = model_args(plan, subject, rolling)
    identity = subject.identity_hash(
        lmeval_backend=backend,
        args={k: v for k, v in args.items() if k != "num_concurrent"},
        lm_eval=version("lm_eval"),
        data=plan.data.sha256,
    )
    cache = work / "cache" / identity
    cache.parent.mkdir(parents=True, exist_ok=True)
    try:
        res = lm_eval.simple_evaluate(
            model=backend,
            model_args=args,
            tasks=configs,
            batch_size=part.batch_size,
            limit=part.limit or plan.suite.limit,
            use_cache=str(cache),
            log_samples=True,
            bootstrap_iters=0,
            random_seed=0,
            numpy_random_seed=1234,
            torch_random_seed=1234,
            fewshot_random_seed=1234,
        )
    except KeyError as exc:
        raise NotFoundError(
            f"lm-eval task {exc} is not shipped here nor registered in lm-eval",
            param="suite.lmeval.tasks",
        ) from exc
    if res is None:
        raise SystemFailure("lm-eval returned no results")
    settings_common = {
        "backend": backend,
        "model_args": {k: str(v) for k, v in args.items()},
        "lm_eval": version("lm_eval"),
        "cache": cache.name[:16],
    }
    for task_name, samples in res.get("samples", {}).items():
        hib = res.get("higher_is_better", {}).get(task_name, {})
        values: dict[str, dict[str, Any]] = {}
        for sample in samples:
            doc = sample.get("doc", {})
            doc_id = str(doc.get("id", sample.get("doc_id")))
            item_id = f"lmeval:{task_name}:{doc_id}"
            result.items.append(
                ItemResult(
                    item_id=item_id,
                    item_hash=str(sample.get("doc_hash", "")),
                    output=str((sample.get("filtered_resps") or [""])[0])[:2000],
                )
            )
            for metric in hib:
                if metric in sample:
                    values.setdefault(metric, {})[item_id] = _sample_value(sample[metric])
        task_cfg = res.get("configs", {}).get(task_name, {})
        for metric, per_item in values.items():
            rows = [v for v in per_item.values() if v is not None]
            binary = all(isinstance(v, float) and v in (0.0, 1.0) for v in rows)
            spec = catalogue.lmeval_spec(
                f"lmeval.{task_name}.{metric}",
                higher_is_better=bool(hib.get(metric, True)),
                kind="binary" if binary else "continuous",
                statistic=PPL_STATISTIC.get(metric, "mean"),
            )
            result.add_metric(
                spec,
                per_item,
                {
                    **settings_common,
                    "task": task_name,
                    "output_type": task_cfg.get("output_type"),
                    "task_hash": res.get("task_hashes", {}).get(task_name),
                    "aggregate": res.get("results", {}).get(task_name, {}).get(f"{metric},none"),
                },
                confidence=plan.suite.confidence,
            )
        advance(1)
    return dict(res)
