"""The base model in memory once (when a subject needs it), with adapters attached by peft and
switched per subject.

Candidate and baseline usually share a base, so one load serves both: adapters are added with
``load_adapter`` and chosen with ``set_adapter``; the base model itself is scored inside
``disable_adapter()``. This is what lm-eval's ``hf`` backend does with ``peft=`` for one adapter.

A full fine-tune replaces every weight, so it is a model of its own, loaded from its version's
folder on first use and kept for the run (one more model per full subject, none per call). Its
prompts are rendered with the loaded base's tokenizer, so its own tokenizer must be that one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from importlib.metadata import version
from typing import Any

from services.evaluator.subjects import Subject
from shared.datasets.render import ChatRenderer
from shared.errors import ValidationError

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16")


class LocalModels:
    """One base model plus peft adapters. Not thread-safe: one evaluation at a time."""

    def __init__(self, subject: Subject, *, dtype: str = "float32", threads: int | None = None):
        import torch
        from transformers import AutoTokenizer

        if dtype not in DTYPES:
            raise ValidationError(f"dtype must be one of {', '.join(DTYPES)}", param="dtype")
        if threads:
            torch.set_num_threads(threads)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.base = subject.base
        self.dtype = dtype
        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(self.base.path))
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._base_model: Any = None  # loaded on first use (see ``model``)
        self.renderer = ChatRenderer(self.tokenizer, None)
        self._peft: Any = None
        self._names: dict[str, str] = {}
        self._full: dict[str, Any] = {}  # version id -> its own model

    @property
    def model(self) -> Any:
        """The base model, loaded on first use: an evaluation of two full fine-tunes never
        needs it (their prompts only need the base's tokenizer)."""
        if self._base_model is None:
            import torch
            from transformers import AutoModelForCausalLM

            log.info("loading base model %s from %s", self.base.name, self.base.path)
            self._base_model = AutoModelForCausalLM.from_pretrained(
                str(self.base.path), dtype=getattr(torch, self.dtype)
            ).eval()
        return self._base_model

    def describe(self, subject: Subject | None = None) -> dict[str, Any]:
        out = {
            "backend": "transformers+peft (in-process)",
            "transformers": version("transformers"),
            "peft": version("peft"),
            "torch": version("torch"),
            "dtype": self.dtype,
            "chat_template_sha256": self.renderer.template_sha256,
        }
        if subject is not None and subject.is_full:
            out.update(backend="transformers (in-process)", weights="full fine-tune")
        return out

    def _same_base(self, subject: Subject) -> None:
        if subject.base.weights_sha256 != self.base.weights_sha256:
            raise ValidationError(
                f"{subject.label} uses base {subject.base.name}, not the loaded {self.base.name}",
                param="baseline",
            )

    def _full_model(self, subject: Subject) -> Any:
        assert subject.version_id is not None and subject.adapter_path is not None
        self._same_base(subject)
        model = self._full.get(subject.version_id)
        if model is not None:
            return model
        import torch
        from transformers import AutoModelForCausalLM

        self._check_tokenizer(subject)
        log.info("loading full model %s from %s", subject.version_id, subject.adapter_path)
        model = AutoModelForCausalLM.from_pretrained(
            str(subject.adapter_path), dtype=getattr(torch, self.dtype)
        ).eval()
        self._full[subject.version_id] = model
        return model

    def _check_tokenizer(self, subject: Subject) -> None:
        """A full model whose folder carries another vocabulary or chat template than its base
        would be scored on prompts it was not trained to read: refused, not scored."""
        from transformers import AutoTokenizer

        assert subject.adapter_path is not None
        if not (subject.adapter_path / "tokenizer_config.json").is_file():
            return  # no tokenizer of its own: the base's is the one it was trained with
        own = AutoTokenizer.from_pretrained(str(subject.adapter_path))
        if own.get_vocab() != self.tokenizer.get_vocab():
            raise ValidationError(
                f"{subject.label} has another vocabulary than its base {self.base.name}; the "
                "evaluator renders every subject's prompts with the base's tokenizer",
                param="candidate",
            )
        if getattr(own, "chat_template", None) != self.tokenizer.chat_template:
            raise ValidationError(
                f"{subject.label} has another chat template than its base {self.base.name}; "
                "the evaluator renders every subject's prompts with the base's template",
                param="candidate",
            )

    def _attach(self, subject: Subject) -> str:
        assert subject.version_id is not None and subject.adapter_path is not None
        self._same_base(subject)
        name = self._names.get(subject.version_id)
        if name is not None:
            return name
        from peft import PeftModel

        name = f"a{len(self._names)}"
        log.info("attaching adapter %s from %s", subject.version_id, subject.adapter_path)
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(
                self.model, str(subject.adapter_path), adapter_name=name
            ).eval()
        else:
            self._peft.load_adapter(str(subject.adapter_path), adapter_name=name)
        self._names[subject.version_id] = name
        return name

    @contextmanager
    def activate(self, subject: Subject) -> Iterator[Any]:
        """The model to call for ``subject``, valid inside the ``with`` block."""
        import torch

        with torch.inference_mode():
            if subject.is_base:
                ctx = self._peft.disable_adapter() if self._peft is not None else nullcontext()
                with ctx:
                    yield self._peft if self._peft is not None else self.model
                return
            if subject.is_full:
                yield self._full_model(subject)
                return
            name = self._attach(subject)
            self._peft.set_adapter(name)
            yield self._peft

    def prompt_ids(self, messages: list[Any]) -> list[int]:
        return self.renderer.ids(list(messages), add_generation_prompt=True)
