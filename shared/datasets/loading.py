"""Read JSONL/JSON/CSV data files and convert every supported format to :class:`Example`.

Supported record formats (detected per record, by their fields):

- chat: ``{"messages": [{"role", "content", "weight"?}, ...]}`` (OpenAI's fine-tuning format)
- prompt (reinforcement): ``{"messages": [..., {"role": "user", ...}], <any other fields>}``: a chat
  without an assistant reply that ends in a user turn; its other fields are kept for the graders
- prompt/completion: ``{"prompt", "completion"}`` (strings, or message lists)
- Alpaca: ``{"instruction", "input"?, "output", "system"?}``
- preference: ``{"prompt", "chosen", "rejected"}`` (strings or message lists; without ``prompt``
  the shared leading messages of ``chosen`` and ``rejected`` are the prompt)
- OpenAI preference: ``{"input": {"messages"}, "preferred_output", "non_preferred_output"}``

Every problem is collected with its file, line and field; :func:`load_examples` raises one
:class:`~shared.errors.ValidationError` that lists all of them.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.datasets.cleaning import Cleaner

# Re-exported: the reading half of loading a file (callers import them from here).
from shared.datasets.reading import FILE_FORMATS as FILE_FORMATS
from shared.datasets.reading import MAX_LISTED_PROBLEMS as MAX_LISTED_PROBLEMS
from shared.datasets.reading import Problems as Problems
from shared.datasets.reading import RawRecord as RawRecord
from shared.datasets.reading import detect_file_format as detect_file_format
from shared.datasets.reading import read_records as read_records
from shared.datasets.records import ROLES, Example, Location, Message


@dataclass
class LoadedFile:
    """The examples of one file plus what loading found out about it."""

    source: str
    file_format: str
    examples: list[Example]
    formats: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    cleaning: dict[str, Any] = field(default_factory=dict)  # Cleaner.report(): what it changed

    @property
    def kind(self) -> str:
        kinds = {e.kind for e in self.examples}
        return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "empty")


def _type_name(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def _text(
    value: Any,
    field: str,
    loc: Location,
    problems: Problems,
    cleaner: Cleaner,
    *,
    required: bool,
    target: bool = False,
) -> str | None:
    """A cleaned string from a string or a list of OpenAI text parts; None after a problem.
    ``target``: an assistant reply a model learns or is scored on (its cleaning is counted)."""
    if value is None:
        if required:
            problems.add(loc, f"`{field}` is missing")
        return None
    if isinstance(value, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in value
    ):
        value = "".join(p["text"] for p in value)
    if not isinstance(value, str):
        problems.add(loc, f"`{field}` must be a string; got {_type_name(value)}")
        return None
    cleaned = cleaner.clean(value, target=target, where=f"{loc} `{field}`")
    if required and not cleaned:
        problems.add(loc, f"`{field}` is empty" + (" after cleaning" if value.strip() else ""))
        return None
    return cleaned


def _messages(
    value: Any, field: str, loc: Location, problems: Problems, cleaner: Cleaner
) -> list[Message] | None:
    if not isinstance(value, list):
        problems.add(loc, f"`{field}` must be a list of messages; got {_type_name(value)}")
        return None
    if not value:
        problems.add(loc, f"`{field}` is an empty list")
        return None
    out: list[Message] = []
    ok = True
    for i, item in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            problems.add(loc, f"`{where}` must be an object with `role` and `content`")
            ok = False
            continue
        role = item.get("role")
        if role not in ROLES:
            got = "nothing" if role is None else repr(role)
            problems.add(loc, f"`{where}.role` must be one of user, assistant, system; got {got}")
            ok = False
        if item.get("tool_calls") or item.get("function_call"):
            problems.add(loc, f"`{where}`: tool calls are not supported for training")
            ok = False
        weight = item.get("weight", 1)
        content = _text(
            item.get("content"),
            f"{where}.content",
            loc,
            problems,
            cleaner,
            required=True,
            target=role == "assistant" and weight != 0,
        )
        if weight not in (0, 1) or isinstance(weight, bool):
            problems.add(loc, f"`{where}.weight` must be 0 or 1; got {weight!r}")
            ok = False
        elif weight == 0 and role != "assistant":
            problems.add(loc, f"`{where}.weight` applies to assistant messages only")
            ok = False
        if content is None or role not in ROLES:
            ok = False
            continue
        out.append(Message(str(role), content, train=weight == 1))
    return out if ok else None


def _check_conversation(msgs: list[Message], field: str, loc: Location, problems: Problems) -> bool:
    ok = True
    for i, m in enumerate(msgs):
        if m.role == "system" and i != 0:
            problems.add(loc, f"`{field}[{i}]`: a system message may only come first")
            ok = False
    first_assistant = next((i for i, m in enumerate(msgs) if m.role == "assistant"), None)
    if first_assistant is None:
        problems.add(loc, f"`{field}` has no assistant message, so nothing would be trained")
        return False
    if not any(m.role == "user" for m in msgs[:first_assistant]):
        problems.add(
            loc,
            f"`{field}[{first_assistant}]`: the first assistant message needs a user "
            "message before it",
        )
        ok = False
    if not any(m.role == "assistant" and m.train for m in msgs):
        problems.add(loc, f"`{field}`: every assistant message has weight 0, so nothing is trained")
        ok = False
    return ok


def _prompt(
    value: Any, field: str, loc: Location, problems: Problems, cleaner: Cleaner
) -> list[Message] | None:
    if isinstance(value, list):
        msgs = _messages(value, field, loc, problems, cleaner)
        if msgs is not None and msgs[-1].role != "user":
            problems.add(loc, f"`{field}` must end with a user message")
            return None
        return msgs
    text = _text(value, field, loc, problems, cleaner, required=True)
    return None if text is None else [Message("user", text)]


def _reply(
    value: Any, field: str, loc: Location, problems: Problems, cleaner: Cleaner
) -> str | None:
    """One assistant reply from a string, a message, or a one-message list."""
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        msgs = _messages(value, field, loc, problems, cleaner)
        if msgs is None:
            return None
        if len(msgs) != 1 or msgs[0].role != "assistant":
            problems.add(loc, f"`{field}` must be a single assistant message")
            return None
        return msgs[0].content
    return _text(value, field, loc, problems, cleaner, required=True, target=True)


def _missing(loc: Location, problems: Problems, data: dict[str, Any], *names: str) -> bool:
    absent = [n for n in names if n not in data or data[n] is None]
    for name in absent:
        problems.add(loc, f"missing field `{name}`")
    return bool(absent)


def detect_record_format(data: dict[str, Any]) -> str | None:
    keys = set(data)
    if "messages" in keys:
        return "chat"
    if "preferred_output" in keys or "non_preferred_output" in keys:
        return "openai_preference"
    if keys & {"chosen", "rejected"}:
        return "preference"
    if "instruction" in keys or ("output" in keys and "completion" not in keys):
        return "alpaca"
    if keys & {"prompt", "completion"}:
        return "prompt_completion"
    return None


def convert_record(
    raw: RawRecord, problems: Problems, cleaner: Cleaner | None = None
) -> Example | None:
    """Convert one raw record to an :class:`Example`, or record its problems and return None.
    ``cleaner`` cleans its texts and counts changes to its assistant replies (default: a
    throw-away one with the default settings)."""
    cleaner = cleaner or Cleaner()
    loc, data = raw.location, raw.data
    if not isinstance(data, dict):
        problems.add(loc, f"each record must be a JSON object; got {_type_name(data)}")
        return None
    fmt = detect_record_format(data)
    before = len(problems.items)
    example_id = f"{loc.source}:{loc.line}"
    if fmt is None:
        fields = ", ".join(sorted(data)) or "none"
        problems.add(
            loc,
            "cannot tell the record format: expected `messages`, `prompt`+`completion`, "
            f"`instruction`+`output`, or `prompt`+`chosen`+`rejected`; got fields {fields}",
        )
        return None
    if fmt == "chat":
        msgs = _messages(data["messages"], "messages", loc, problems, cleaner)
        if msgs is not None and _is_prompt(msgs):
            return _prompt_example(example_id, loc, msgs, data, problems)
        if msgs is None or not _check_conversation(msgs, "messages", loc, problems):
            return None
        return Example(example_id, loc, fmt, tuple(msgs))
    if fmt == "prompt_completion":
        if _missing(loc, problems, data, "prompt", "completion"):
            return None
        prompt = _prompt(data["prompt"], "prompt", loc, problems, cleaner)
        completion = _reply(data["completion"], "completion", loc, problems, cleaner)
        if prompt is None or completion is None:
            return None
        return Example(example_id, loc, fmt, (*prompt, Message("assistant", completion)))
    if fmt == "alpaca":
        if _missing(loc, problems, data, "instruction", "output"):
            return None
        instruction = _text(
            data["instruction"], "instruction", loc, problems, cleaner, required=True
        )
        extra = _text(data.get("input"), "input", loc, problems, cleaner, required=False)
        output = _text(data["output"], "output", loc, problems, cleaner, required=True, target=True)
        system = _text(data.get("system"), "system", loc, problems, cleaner, required=False)
        if instruction is None or output is None or len(problems.items) > before:
            return None
        user = f"{instruction}\n\n{extra}" if extra else instruction
        msgs = ([Message("system", system)] if system else []) + [
            Message("user", user),
            Message("assistant", output),
        ]
        return Example(example_id, loc, fmt, tuple(msgs))
    if fmt == "openai_preference":
        if _missing(loc, problems, data, "input", "preferred_output", "non_preferred_output"):
            return None
        inp = data["input"]
        if not isinstance(inp, dict) or "messages" not in inp:
            problems.add(loc, "`input` must be an object with `messages`")
            return None
        prompt = _prompt(inp["messages"], "input.messages", loc, problems, cleaner)
        chosen = _reply(data["preferred_output"], "preferred_output", loc, problems, cleaner)
        rejected = _reply(
            data["non_preferred_output"], "non_preferred_output", loc, problems, cleaner
        )
        return _preference(example_id, loc, fmt, prompt, chosen, rejected, problems)
    # preference
    if _missing(loc, problems, data, "chosen", "rejected"):
        return None
    if data.get("prompt") is None:
        return _implicit_preference(example_id, loc, data, problems, cleaner)
    prompt = _prompt(data["prompt"], "prompt", loc, problems, cleaner)
    chosen = _reply(data["chosen"], "chosen", loc, problems, cleaner)
    rejected = _reply(data["rejected"], "rejected", loc, problems, cleaner)
    return _preference(example_id, loc, fmt, prompt, chosen, rejected, problems)


def _is_prompt(msgs: list[Message]) -> bool:
    """A chat with no assistant reply that ends in a user turn: a prompt to sample answers for."""
    return msgs[-1].role == "user" and not any(m.role == "assistant" for m in msgs)


def _prompt_example(
    example_id: str, loc: Location, msgs: list[Message], data: dict[str, Any], problems: Problems
) -> Example | None:
    for i, m in enumerate(msgs):
        if m.role == "system" and i != 0:
            problems.add(loc, f"`messages[{i}]`: a system message may only come first")
            return None
    item = json.dumps({k: v for k, v in data.items() if k != "messages"}, sort_keys=True)
    return Example(example_id, loc, "prompt", tuple(msgs), item_json=item)


def _preference(
    example_id: str,
    loc: Location,
    fmt: str,
    prompt: list[Message] | None,
    chosen: str | None,
    rejected: str | None,
    problems: Problems,
) -> Example | None:
    if prompt is None or chosen is None or rejected is None:
        return None
    if chosen == rejected:
        problems.add(loc, "`chosen` and `rejected` are identical, so the pair teaches nothing")
        return None
    return Example(example_id, loc, fmt, tuple(prompt), chosen=chosen, rejected=rejected)


def _implicit_preference(
    example_id: str, loc: Location, data: dict[str, Any], problems: Problems, cleaner: Cleaner
) -> Example | None:
    """``chosen``/``rejected`` as whole conversations: their shared leading messages are the prompt."""
    if not (isinstance(data["chosen"], list) and isinstance(data["rejected"], list)):
        problems.add(
            loc,
            "missing field `prompt`: give a `prompt`, or make `chosen` and `rejected` whole "
            "conversations that share their leading messages",
        )
        return None
    chosen = _messages(data["chosen"], "chosen", loc, problems, cleaner)
    rejected = _messages(data["rejected"], "rejected", loc, problems, cleaner)
    if chosen is None or rejected is None:
        return None
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    prompt, c_rest, r_rest = chosen[:shared], chosen[shared:], rejected[shared:]
    if not prompt or prompt[-1].role != "user":
        problems.add(loc, "missing prompt: `chosen` and `rejected` share no leading user turn")
        return None
    if len(c_rest) != 1 or len(r_rest) != 1 or {c_rest[0].role, r_rest[0].role} != {"assistant"}:
        problems.add(loc, "`chosen` and `rejected` must differ only in their last assistant reply")
        return None
    return _preference(
        example_id, loc, "preference", prompt, c_rest[0].content, r_rest[0].content, problems
    )


def parse_file(
    data: bytes, source: str, *, keep_markup: bool = False
) -> tuple[LoadedFile, Problems]:
    """Read and convert a whole file, collecting all problems (does not raise)."""
    problems = Problems()
    cleaner = Cleaner(keep_markup=keep_markup)
    file_format, records = read_records(data, source, problems)
    examples: list[Example] = []
    formats: Counter[str] = Counter()
    for raw in records:
        example = convert_record(raw, problems, cleaner)
        if example is not None:
            examples.append(example)
            formats[example.format] += 1
    if not records and not problems:
        problems.add(Location(source, 1), "the file holds no records")
    kinds = Counter(e.kind for e in examples)
    if len(kinds) > 1:
        majority = kinds.most_common(1)[0][0]
        for e in examples:
            if e.kind != majority:
                problems.add(
                    e.location,
                    f"a {e.kind} record in a file of {majority} records; one file holds one kind",
                )
    loaded = LoadedFile(
        source, file_format, examples, dict(formats), problems.items, cleaner.report()
    )
    return loaded, problems


def load_examples(
    path: Path | str, *, source: str | None = None, keep_markup: bool = False
) -> LoadedFile:
    """Load a data file; raise a ValidationError listing every problem if there is any."""
    path = Path(path)
    name = source or path.name
    loaded, problems = parse_file(path.read_bytes(), name, keep_markup=keep_markup)
    problems.raise_if_any(f"data file {name}", param=name)
    return loaded
