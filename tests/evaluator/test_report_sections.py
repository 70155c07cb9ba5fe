"""The report parts of single checks (contamination, PII leaks, forgetting, the few-shot
baseline) as JUnit cases and HTML sections, and the number format and escaping they share."""

from __future__ import annotations

import math
from xml.etree import ElementTree as ET

from services.evaluator import report_sections as rs
from services.evaluator.contamination import ContaminationReport, Overlap
from services.evaluator.gate import GateResult, LineResult
from services.evaluator.metrics import catalogue
from services.evaluator.results import ItemResult, RunResult, SubjectResult

EMAIL = "jane.doe@gmail.com"


def subject(role: str, values: dict[str, list[int]], **identity: str | None) -> SubjectResult:
    n = len(next(iter(values.values())))
    res = SubjectResult(
        role=role,
        model=f"{role}-model",
        identity=dict(identity),
        items=[ItemResult(item_id=f"i{k}", item_hash=f"h{k}") for k in range(n)],
    )
    for name, vals in values.items():
        res.add_metric(catalogue.spec(name), {f"i{k}": v for k, v in enumerate(vals)}, {})
    return res


def gate(status: str, *reasons: str) -> GateResult:
    line = LineResult(metric="forgetting.accuracy", status=status, reasons=list(reasons))
    return GateResult(decision="pass", lines=[line], confidence=0.95, policy_sha256="0")


def test_numbers_and_escaping() -> None:
    assert rs.number(None) == "—" and rs.number(math.nan) == "—" and rs.number(math.inf) == "—"
    assert rs.number(0.123456) == "0.1235" and rs.number(12345.0) == "1.234e+04"
    assert rs.escape("<b>&") == "&lt;b&gt;&amp;"


def test_an_output_leaking_pii_is_shown_redacted() -> None:
    leak = ItemResult(
        item_id="i", item_hash="h", output=f"mail {EMAIL}", extra={"pii_leaks": ["x"]}
    )
    assert EMAIL not in rs.shown_output(leak)
    clean = ItemResult(item_id="i", item_hash="h", output=f"mail {EMAIL}")
    assert rs.shown_output(clean) == f"mail {EMAIL}"  # PII from the prompt is no leak


def test_pii_summary_and_section_count_leaks_per_subject() -> None:
    cand = subject("candidate", {"pii.leak_rate": [1, 0, 0, 0]}, base_model="m", adapter="a")
    cand.items[0].extra["pii_leaks"] = ["email:j***m"]
    cand.metrics["pii.leak_rate"].settings = {
        "training_file": "t.jsonl",
        "training_pii": {"email": 2},
    }
    base = subject("baseline", {"pii.leak_rate": [0, 0, 0, 0]})
    run = RunResult(run_id="r", candidate=cand, baseline=base)
    assert rs.pii_summary(run) == (
        "candidate candidate-model: 0.25 (1 of 4 outputs leak); "
        "baseline baseline-model: 0 (0 of 4 outputs leak)"
    )
    html = "".join(rs.pii_section(run))
    assert "t.jsonl" in html and "email 2" in html and "<td>i0</td>" in html
    assert "email:j***m" in html and "<td>i1</td>" not in html
    no_check = subject("candidate", {"exact_match": [1]})
    assert rs.pii_section(RunResult(run_id="r", candidate=no_check)) == []


def test_contamination_lists_the_overlapping_items() -> None:
    report = ContaminationReport(
        training={"file": "train.jsonl"},
        n_items=10,
        n_training_rows=50,
        n_short_items=1,
        ngram=8,
        threshold=0.5,
        rate=0.1,
        overlaps=[
            Overlap(
                item_id="i3",
                item_index=3,
                kind="ngram",
                overlap=0.75,
                training_row="r7",
                training_location="train.jsonl line 7",
                item_text="<tag> text",
            )
        ],
    )
    run = RunResult(run_id="r", candidate=subject("candidate", {"exact_match": [1]}))
    run.contamination = report
    head, row = rs.contamination_text(run).split("\n")
    assert head.startswith("1 of 10 evaluation items overlap 50 training rows of train.jsonl")
    assert ">= 0.5 of words in shared 8-grams); rate 0.1; 1 items shorter than 8" in head
    assert row == "i3 (#3): ngram 75% of training row r7 (train.jsonl line 7)"
    suite = ET.Element("testsuite")
    rs.contamination_case(suite, run)
    case = suite.find("testcase")
    assert case is not None and case.find("failure") is None  # the gate line is the failure
    assert case.findtext("system-out") == rs.contamination_text(run)
    html = "".join(rs.contamination_html(run))
    assert "Contamination (1 items)" in html and "&lt;tag&gt; text" in html
    assert "<p>1 of 10 evaluation items overlap" in html
    run.contamination = ContaminationReport(error="no training data")
    assert rs.contamination_text(run) == "not checked: no training data"


def test_forgetting_is_held_against_the_bare_base_and_fails_with_its_gate_line() -> None:
    cand = subject("candidate", {"forgetting.accuracy": [1, 0, 1, 1]}, base_model="m", adapter="a")
    cand.metrics["forgetting.accuracy"].settings = {"set": "general_mc", "n_questions": 4}
    ref = subject("base", {"forgetting.accuracy": [1, 1, 0, 0]}, base_model="m", adapter=None)
    run = RunResult(run_id="r", candidate=cand, reference=ref)
    text = rs.forgetting_text(run, gate("fail", "forgetting.accuracy: worse by 0.25"))
    head, reason = text.split("\n")
    assert head.startswith(
        "general_mc, 4 questions (log-likelihood): candidate candidate-model 0.75"
    )
    assert "vs base model base-model 0.5 (scored for this check)" in head
    assert head.endswith("; 1 questions lost, 2 gained of 4 shared")
    assert reason == "forgetting.accuracy: worse by 0.25"
    suite = ET.Element("testsuite")
    assert rs.forgetting_case(suite, run, gate("fail", "worse")) == 1
    case = suite.find("testcase")
    assert case is not None and case.get("name") == "forgetting.accuracy vs base model base-model"
    failure = case.find("failure")
    assert failure is not None and failure.get("message") == "worse"
    assert rs.forgetting_case(suite, run, gate("pass", "fine")) == 0
    assert rs.forgetting_case(suite, run, None) == 0
    assert rs.forgetting_text(run, None).endswith("no gate line on forgetting.accuracy")
    html = "".join(rs.forgetting_html(run, gate("fail", "<worse>")))
    assert "<span class='fail'>fail</span>" in html and "&lt;worse&gt;" in html
    as_baseline = RunResult(
        run_id="r", candidate=cand, baseline=ref.model_copy(update={"role": "baseline"})
    )
    assert "(the run's baseline)" in rs.forgetting_text(as_baseline, None)
    alone = RunResult(run_id="r", candidate=cand)
    assert rs.forgetting_text(alone, None).endswith(
        "the base model was not scored, so nothing to compare with"
    )


def test_the_few_shot_baseline_is_listed_with_its_examples() -> None:
    cand = subject("candidate", {"exact_match": [1]})
    base = subject("baseline", {"exact_match": [0]})
    base.fewshot = {
        "k": 1,
        "seed": 7,
        "sha256": "abcdef0123456789",
        "examples": [[{"role": "user", "content": "q<"}, {"role": "assistant", "content": "a"}]],
    }
    run = RunResult(run_id="r", candidate=cand, baseline=base)
    head, example = rs.fewshot_text(base).split("\n")
    assert "shown 1 examples" in head and "seed 7" in head and "sha256 abcdef012345)" in head
    assert example == "user: q< | assistant: a"
    suite = ET.Element("testsuite")
    assert rs.fewshot_case(suite, run) == 1
    assert "<pre>user: q&lt; | assistant: a</pre>" in "".join(rs.fewshot_html(run))
    plain = RunResult(
        run_id="r", candidate=cand, baseline=subject("baseline", {"exact_match": [0]})
    )
    assert rs.fewshot_case(suite, plain) == 0 and rs.fewshot_html(plain) == []
