"""The one internal form every dataset format is converted to.

A supervised example is a conversation; a preference example is a prompt conversation plus a chosen
and a rejected assistant reply; a prompt example (reinforcement) is a conversation ending in a user
turn plus the record's other fields, which graders read. Each example remembers where it came from (file and line), so every
later report can point a user at the exact record.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal

ROLES = ("system", "user", "assistant")
Kind = Literal["sft", "preference", "prompt"]


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    # OpenAI's per-message ``weight``: 0 keeps an assistant turn in the context but out of the loss.
    train: bool = True

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Location:
    source: str
    line: int
    unit: Literal["line", "record"] = "line"

    def __str__(self) -> str:
        return f"{self.source} {self.unit} {self.line}"


@dataclass(frozen=True)
class Example:
    """One training example. ``messages`` is the whole conversation (SFT) or the prompt (DPO)."""

    id: str
    location: Location
    format: str
    messages: tuple[Message, ...]
    chosen: str | None = None
    rejected: str | None = None
    notes: tuple[str, ...] = field(default=())
    # A prompt example's other fields as sorted JSON (hashable); None for the other kinds.
    item_json: str | None = None

    @property
    def kind(self) -> Kind:
        if self.item_json is not None:
            return "prompt"
        return "preference" if self.chosen is not None else "sft"

    @property
    def item(self) -> dict[str, object]:
        """A prompt example's fields besides ``messages`` (what ``{{item.<field>}}`` reads)."""
        return dict(json.loads(self.item_json)) if self.item_json is not None else {}

    def content_key(self) -> str:
        """Hash of what the model sees; equal keys are exact duplicates."""
        payload = {
            "m": [[m.role, m.content, m.train] for m in self.messages],
            "c": self.chosen,
            "r": self.rejected,
            **({"i": self.item_json} if self.item_json is not None else {}),
        }
        return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()

    def text(self) -> str:
        """All text of the example, for similarity measures."""
        parts = [m.content for m in self.messages]
        parts += [t for t in (self.chosen, self.rejected) if t is not None]
        return "\n".join(parts)

    def to_record(self) -> dict[str, object]:
        """The cleaned example as a JSON-able record in our canonical format."""
        if self.kind == "prompt":
            return {"messages": [m.to_dict() for m in self.messages], **self.item}
        if self.kind == "preference":
            return {
                "prompt": [m.to_dict() for m in self.messages],
                "chosen": self.chosen,
                "rejected": self.rejected,
            }
        return {
            "messages": [
                {**m.to_dict(), **({} if m.train or m.role != "assistant" else {"weight": 0})}
                for m in self.messages
            ]
        }
