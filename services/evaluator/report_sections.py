"""The parts of the run outputs that belong to one check: contamination, PII leaks and forgetting
(JUnit case, HTML section), and the escaping and number format every section of ``report.py`` shares.
"""

from __future__ import annotations

import html
import math
from typing import Any
from xml.etree import ElementTree as ET

from services.evaluator.gate import GateResult, LineResult
from services.evaluator.results import ItemResult, RunResult, SubjectResult, paired_arrays
from shared.pii import redact

FLIP_LIMIT = 50
PII_METRIC = "pii.leak_rate"
CONTAMINATION_LIMIT = 200


def contamination_text(result: RunResult) -> str:
    c = result.contamination
    assert c is not None
    if c.error:
        return f"not checked: {c.error}"
    head = (
        f"{len(c.overlaps)} of {c.n_items} evaluation items overlap {c.n_training_rows} training "
        f"rows of {c.training.get('file', '?')} (exact, or >= {c.threshold:g} of words in shared "
        f"{c.ngram}-grams); rate {number(c.rate)}; {c.n_short_items} items shorter than {c.ngram} "
        "words checked for exact matches only"
    )
    rows = [
        f"{o.item_id} (#{o.item_index}): {o.kind} {o.overlap:.0%} of training row "
        f"{o.training_row} ({o.training_location})"
        for o in c.overlaps
    ]
    return "\n".join([head, *rows])


def contamination_case(suite: ET.Element, result: RunResult) -> None:
    """The contamination check as its own test case listing the overlapping items. It never fails
    itself: a gate line on its metric is the failure (one failure per problem), and carries the
    same list."""
    case = ET.SubElement(suite, "testcase", classname="contamination", name="training data overlap")
    ET.SubElement(case, "system-out").text = contamination_text(result)


def fewshot_text(subject: SubjectResult) -> str:
    shots = subject.fewshot or {}
    head = (
        f"{subject.model}: the base model shown {shots.get('k')} examples from the candidate's "
        f"training data (seed {shots.get('seed')}, none overlapping an evaluation item; "
        f"sha256 {str(shots.get('sha256', ''))[:12]}) before each evaluation prompt"
    )
    examples = [
        " | ".join(f"{m['role']}: {m['content']}" for m in shot)
        for shot in shots.get("examples", [])
    ]
    return "\n".join([head, *examples])


def fewshot_case(suite: ET.Element, result: RunResult) -> int:
    """The few-shot baseline the candidate was compared with, as a case CI lists. Returns the
    cases added."""
    if result.baseline is None or result.baseline.fewshot is None:
        return 0
    case = ET.SubElement(suite, "testcase", classname="baseline", name="few-shot base")
    ET.SubElement(case, "system-out").text = fewshot_text(result.baseline)
    return 1


def fewshot_html(result: RunResult) -> list[str]:
    if result.baseline is None or result.baseline.fewshot is None:
        return []
    head, *examples = fewshot_text(result.baseline).split("\n")
    rows = "".join(f"<li><pre>{escape(e)}</pre></li>" for e in examples)
    return [f"<h2>Few-shot baseline</h2><p>{escape(head)}</p><ol>{rows}</ol>"]


def shown_output(item: ItemResult) -> str:
    """An output as the report shows it: redacted where it leaks training-data PII, since
    reports travel further than the training data may (CI artifacts, review threads)."""
    return redact(item.output)[0] if item.extra.get("pii_leaks") else item.output


def escape(x: Any) -> str:
    return html.escape(str(x))


def pii_summary(result: RunResult) -> str:
    parts = []
    for subject in result.subjects():
        m = subject.metrics.get(PII_METRIC)
        if m is None:
            continue
        leaked = sum(1 for i in subject.items if i.extra.get("pii_leaks"))
        value = number(m.value) if m.ok else f"error: {m.error}"
        parts.append(f"{subject.role} {subject.model}: {value} ({leaked} of {m.n} outputs leak)")
    return "; ".join(parts)


def pii_section(result: RunResult) -> list[str]:
    """Leaks of training-data PII per subject: counts, kinds and masked values (never the PII)."""
    metric = result.candidate.metrics.get(PII_METRIC)
    if metric is None:
        return []
    settings = metric.settings
    training = ", ".join(f"{k} {n}" for k, n in (settings.get("training_pii") or {}).items())
    parts = [
        "<h2 id='pii'>PII leaks (training data reproduced)</h2>",
        f"<p>training file {escape(settings.get('training_file') or 'none')}: "
        f"{escape(training or 'no PII found')}. {escape(pii_summary(result))}.</p>",
    ]
    rows = [
        (subject.role, item.item_id, item.extra["pii_leaks"])
        for subject in result.subjects()
        for item in subject.items
        if item.extra.get("pii_leaks")
    ]
    if rows:
        parts.append("<table><tr><th>subject</th><th>item</th><th>leaked (masked)</th></tr>")
        parts += [
            f"<tr><td>{escape(role)}</td><td>{escape(item_id)}</td><td>{escape(', '.join(leaked))}</td></tr>"
            for role, item_id, leaked in rows[:FLIP_LIMIT]
        ]
        parts.append("</table>")
    return parts


def number(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.4g}"


def contamination_html(result: RunResult) -> list[str]:
    c = result.contamination
    assert c is not None
    out = [f"<h2 id='contamination'>Contamination ({len(c.overlaps)} items)</h2>"]
    out.append(f"<p>{escape(contamination_text(result).splitlines()[0])}</p>")
    if c.overlaps:
        out.append(
            "<table><tr><th>item</th><th>match</th><th>overlap</th><th>training row</th>"
            "<th>item text (normalised)</th></tr>"
        )
        for o in c.overlaps[:CONTAMINATION_LIMIT]:
            out.append(
                f"<tr><td>{escape(o.item_id)} (#{o.item_index})</td><td class='fail'>{escape(o.kind)}</td>"
                f"<td>{o.overlap:.0%}</td><td>{escape(o.training_row)} <code>"
                f"{escape(o.training_location)}</code></td><td><pre>{escape(o.item_text)}</pre></td></tr>"
            )
        out.append("</table>")
        if len(c.overlaps) > CONTAMINATION_LIMIT:
            out.append(f"<p>… and {len(c.overlaps) - CONTAMINATION_LIMIT} more in result.json.</p>")
    return out


FORGETTING_METRIC = "forgetting.accuracy"


def forgetting_text(result: RunResult, gate: GateResult | None) -> str:
    """Candidate vs the bare base model on the general set: accuracies, items lost and gained,
    and the gate line (its interval and minimum detectable difference) when the policy has one."""
    cand = result.candidate.metrics[FORGETTING_METRIC]
    base = result.compared_with(FORGETTING_METRIC)
    settings = cand.settings
    head = (
        f"{settings.get('set', '?')}, {settings.get('n_questions', cand.n)} questions "
        f"({settings.get('scoring', 'log-likelihood')}): candidate {result.candidate.model} "
        f"{number(cand.value) if cand.ok else 'error: ' + str(cand.error)}"
    )
    if base is None:
        return head + "; the base model was not scored, so nothing to compare with"
    b = base.metrics.get(FORGETTING_METRIC)
    source = "scored for this check" if base is result.reference else f"the run's {base.role}"
    head += f" vs base model {base.model} {number(b.value) if b else '—'} ({source})"
    ids, c, r = paired_arrays(result.candidate, base, FORGETTING_METRIC)
    if ids:
        lost, gained = (
            int(((r[:, 0] == 1) & (c[:, 0] == 0)).sum()),
            int(((r[:, 0] == 0) & (c[:, 0] == 1)).sum()),
        )
        head += f"; {lost} questions lost, {gained} gained of {len(ids)} shared"
    line = _gate_line(gate, FORGETTING_METRIC)
    return "\n".join([head, *(line.reasons if line else ["no gate line on forgetting.accuracy"])])


def _gate_line(gate: GateResult | None, metric: str) -> LineResult | None:
    return next((ln for ln in gate.lines if ln.metric == metric), None) if gate else None


def forgetting_case(suite: ET.Element, result: RunResult, gate: GateResult | None) -> int:
    """The forgetting check as its own test case, named after the base model it was held
    against; it fails when the gate's forgetting line failed. Returns failures added."""
    base = result.compared_with(FORGETTING_METRIC)
    name = f"{FORGETTING_METRIC} vs base model {base.model if base else '(none)'}"
    case = ET.SubElement(suite, "testcase", classname="forgetting", name=name)
    text = forgetting_text(result, gate)
    line = _gate_line(gate, FORGETTING_METRIC)
    if line is not None and line.status == "fail":
        ET.SubElement(
            case, "failure", message=line.reasons[0] if line.reasons else "fail"
        ).text = text
        return 1
    ET.SubElement(case, "system-out").text = text
    return 0


def forgetting_html(result: RunResult, gate: GateResult | None) -> list[str]:
    line = _gate_line(gate, FORGETTING_METRIC)
    status = f" <span class='{line.status}'>{escape(line.status)}</span>" if line else ""
    head, *reasons = forgetting_text(result, gate).splitlines()
    return [
        f"<h2 id='forgetting'>Forgetting (against the base model){status}</h2>",
        f"<p>{escape(head)}</p>",
        f"<pre>{escape(chr(10).join(reasons))}</pre>",
    ]
