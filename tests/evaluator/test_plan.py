"""A run's plan: the subjects and items it covers, the generation backend it picks, and every
request refused before a model loads (validate_plan) or before heavy work (preflight)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from services.evaluator.data import EvalItem
from services.evaluator.plan import preflight, validate_plan
from shared.datasets.records import Message
from shared.errors import SystemFailure, ValidationError
from tests.evaluator import planning

FEWSHOT = replace(planning.BARE, shots=((Message("user", "q"), Message("assistant", "a")),))


def test_subjects_items_and_description() -> None:
    plan = planning.plan({"limit": 2}, n=5, server_url="http://srv")
    assert [role for role, _ in plan.subjects] == ["candidate", "baseline"]
    assert [i.item_id for i in plan.items] == ["q0", "q1"]
    assert len(planning.plan(n=5).items) == 5
    assert [r for r, _ in planning.plan(baseline=None).subjects] == ["candidate"]
    described = plan.describe()
    assert described["candidate"] == "a@v2" and described["baseline"] == "m"
    assert described["server_url"] == "http://srv" and described["suite"]["limit"] == 2
    assert described["data"]["n_items"] == 5 and "fewshot" not in described
    assert "api_key" not in described["suite"]["judge"]
    assert planning.plan(baseline=FEWSHOT).describe()["fewshot"]["k"] == 1
    assert planning.plan(baseline=None).describe()["baseline"] is None


def test_generation_backend_is_the_server_when_auto_and_one_is_set() -> None:
    assert planning.plan().generation_backend() == "local"
    assert planning.plan(server_url="http://srv").generation_backend() == "server"
    local = {"generation": {"backend": "local"}}
    assert planning.plan(local, server_url="http://srv").generation_backend() == "local"


def test_a_workable_plan_passes() -> None:
    validate_plan(
        planning.plan(
            {
                "generation": {"enabled": True},
                "judge": {"enabled": True},
                "parity": {"enabled": True},
            },
            server_url="http://srv",
            judge_url="http://judge",
        )
    )
    text_rows = [EvalItem(f"t{k}", (), "plain", f"t.jsonl line {k}") for k in range(5)]
    validate_plan(planning.plan({"perplexity": {"enabled": True}}, data=text_rows))


@pytest.mark.parametrize(
    ("suite", "extra", "message"),
    [
        ({"generation": {"enabled": True, "metrics": ["perplexity"]}}, {}, "perplexity"),
        ({"generation": {"enabled": True, "backend": "server"}}, {}, "backend `server` needs"),
        ({"parity": {"enabled": True}}, {}, "serving-parity check needs a server URL"),
        ({"judge": {"enabled": True}}, {}, "the judge needs an OpenAI-compatible endpoint"),
        (
            {"judge": {"enabled": True, "modes": ["pairwise"]}},
            {"judge_url": "http://j", "baseline": None},
            "pairwise judging needs a baseline",
        ),
        (
            {"lmeval": {"enabled": True}},
            {"baseline": FEWSHOT},
            "lm-eval tasks set their own few-shot examples",
        ),
    ],
)
def test_what_cannot_work_is_refused_before_a_model_loads(
    suite: dict[str, Any], extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        validate_plan(planning.plan(suite, **extra))


def test_plain_text_rows_are_refused_for_parts_that_need_prompts() -> None:
    rows = [EvalItem(f"t{k}", (), "plain", f"t.jsonl line {k}") for k in range(5)]
    with pytest.raises(ValidationError) as err:
        validate_plan(planning.plan({"generation": {"enabled": True}}, data=rows))
    assert err.value.message.startswith("generation need prompt + reference rows")
    assert "(e.g. t.jsonl line 0, t.jsonl line 1, t.jsonl line 2)" in err.value.message


def test_preflight_reaches_each_endpoint_the_run_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    reached: list[tuple[str, str | None]] = []

    def check(url: str, api_key: str | None = None) -> list[str]:
        if "down" in url:
            raise SystemFailure("connection refused", param="server_url")
        reached.append((url, api_key))
        return []

    monkeypatch.setattr("services.evaluator.plan.check_server", check)
    preflight(planning.plan({"perplexity": {"enabled": True}}, server_url="http://srv"))
    assert reached == []  # nothing remote in this run
    suite = {"generation": {"enabled": True}, "judge": {"enabled": True}}
    preflight(
        planning.plan(suite, server_url="http://srv", judge_url="http://j", judge_api_key="k")
    )
    assert reached == [("http://j", "k"), ("http://srv", None)]
    reached.clear()
    preflight(planning.plan({"parity": {"enabled": True}}, server_url="http://srv"))
    lmeval = {"lmeval": {"enabled": True, "backend": "local-completions"}}
    preflight(planning.plan(lmeval, server_url="http://srv", server_api_key="s"))
    assert reached == [("http://srv", None), ("http://srv", "s")]
    with pytest.raises(SystemFailure, match="the judge endpoint http://down is unreachable"):
        preflight(planning.plan({"judge": {"enabled": True}}, judge_url="http://down"))
