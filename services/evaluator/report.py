"""Run outputs: JSON result, JUnit XML (one test case per gate line), and a self-contained HTML
report with matplotlib figures embedded as PNG data URIs (no external files, no network).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from services.evaluator.contamination import METRIC as CONTAMINATION_METRIC
from services.evaluator.gate import GateResult
from services.evaluator.report_sections import (
    FLIP_LIMIT,
    FORGETTING_METRIC,
    PII_METRIC,
    contamination_case,
    contamination_html,
    contamination_text,
    escape,
    fewshot_case,
    fewshot_html,
    forgetting_case,
    forgetting_html,
    number,
    pii_section,
    pii_summary,
    shown_output,
)
from services.evaluator.results import JudgeReliability, RunResult, SubjectResult, paired_arrays


def result_json(result: RunResult, gate: GateResult | None) -> dict[str, Any]:
    data = result.model_dump(mode="json")
    for subject in ("candidate", "baseline", "reference"):
        if data.get(subject):
            data[subject].pop("items", None)
    data["gate"] = gate.model_dump(mode="json") if gate else None
    data["exit_code"] = gate.exit_code if gate else 0
    return data


def junit_xml(result: RunResult, gate: GateResult | None) -> str:
    suite = ET.Element("testsuite", name=f"loraplex-eval {result.candidate.model}")
    cases = 0
    failures = 0
    skipped = 0
    lines = gate.lines if gate else []
    for line in lines:
        cases += 1
        case = ET.SubElement(suite, "testcase", classname="gate", name=line.metric)
        text = "\n".join(line.reasons)
        if line.metric == CONTAMINATION_METRIC and result.contamination is not None:
            text += "\n" + contamination_text(result)
        if line.status == "fail":
            failures += 1
            ET.SubElement(
                case, "failure", message=line.reasons[0] if line.reasons else "fail"
            ).text = text
        elif line.status in ("inconclusive", "skipped"):
            skipped += 1
            ET.SubElement(case, "skipped", message=f"{line.status}: {text}")
        else:
            ET.SubElement(case, "system-out").text = text
    pii = result.candidate.metrics.get(PII_METRIC)
    if pii is not None and not any(line.metric == PII_METRIC for line in lines):
        # The PII check ran without a gate line on it: still one case, failed when it could not
        # be measured, so CI shows that it ran (with a gate, the gate line is that case).
        cases += 1
        case = ET.SubElement(suite, "testcase", classname="pii", name=PII_METRIC)
        if not pii.ok:
            failures += 1
            ET.SubElement(case, "failure", message=pii.error or "no value")
        else:
            ET.SubElement(case, "system-out").text = pii_summary(result)
    if gate is None:
        for name, metric in result.candidate.metrics.items():
            if name == PII_METRIC:
                continue
            cases += 1
            case = ET.SubElement(suite, "testcase", classname="metric", name=name)
            if not metric.ok:
                failures += 1
                ET.SubElement(case, "failure", message=metric.error or "no value")
            else:
                ET.SubElement(case, "system-out").text = f"{name} = {metric.value}"
    if result.contamination is not None:
        cases += 1
        contamination_case(suite, result)
    cases += fewshot_case(suite, result)
    if FORGETTING_METRIC in result.candidate.metrics:
        cases += 1
        failures += forgetting_case(suite, result, gate)
    suite.set("tests", str(cases))
    suite.set("failures", str(failures))
    suite.set("skipped", str(skipped))
    suite.set("errors", "0")
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True)


# --------------------------------------------------------------------------------------------
# figures


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _fig_scores(result: RunResult) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, m in result.candidate.metrics.items() if m.ok]
    if not names:
        return None
    cols = min(6, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.6 * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[len(names) :]:
        ax.set_visible(False)
    for ax, name in zip(flat, names, strict=False):
        labels, values, lows, highs, colors = [], [], [], [], []
        for subject, color in ((result.candidate, "#3465a4"), (result.baseline, "#999999")):
            if subject is None or name not in subject.metrics or not subject.metrics[name].ok:
                continue
            m = subject.metrics[name]
            labels.append(subject.role)
            values.append(m.value)
            value = float(m.value)  # type: ignore[arg-type]
            # A percentile interval of a corpus statistic need not contain the point estimate.
            lows.append(max(0.0, value - (m.ci_low if m.ci_low is not None else value)))
            highs.append(max(0.0, (m.ci_high if m.ci_high is not None else value) - value))
            colors.append(color)
        ax.bar(range(len(values)), values, yerr=[lows, highs], color=colors, capsize=4)
        ax.set_xticks(range(len(values)), labels, fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    fig.suptitle("Scores with confidence intervals", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _fig_loss(result: RunResult) -> str | None:
    points = result.loss_curve
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    for key, label in (("loss", "training loss"), ("eval_loss", "validation loss")):
        xs = [p["step"] for p in points if isinstance(p.get(key), int | float)]
        ys = [p[key] for p in points if isinstance(p.get(key), int | float)]
        if xs:
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax.set_title("Training loss (from the adapter manifest)", fontsize=10)
    return _png(fig)


def _fig_judge(result: RunResult, limits: dict[str, float] | None) -> str | None:
    judge = result.judge
    if judge is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["flip rate", "anchor accuracy", "first-position rate", "parse-failure rate"]
    values = [
        judge.flip_rate,
        judge.anchor_accuracy,
        judge.first_position_rate,
        judge.parse_failure_rate,
    ]
    fig, ax = plt.subplots(figsize=(5, 2.6))
    ax.barh(names, [v if v is not None else 0 for v in values], color="#75507b")
    if limits:
        ax.axvline(limits["max_flip_rate"], color="#cc0000", ls="--", lw=1, label="flip limit")
        ax.axvline(
            limits["min_anchor_accuracy"], color="#4e9a06", ls="--", lw=1, label="anchor limit"
        )
        if "max_parse_failure_rate" in limits:  # absent from limits recorded before it existed
            ax.axvline(
                limits["max_parse_failure_rate"], color="#c4a000", ls=":", lw=1, label="parse limit"
            )
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xlim(0, 1)
    ax.set_title(f"Judge reliability ({judge.judge_model})", fontsize=10)
    return _png(fig)


# --------------------------------------------------------------------------------------------
# HTML


def _parse_failures(j: JudgeReliability) -> str:
    """``3 of 60 (0.05): pairwise 1, rubric 2``; just the count for summaries without replies."""
    if not j.replies:
        return str(j.parse_failures)
    modes = ", ".join(f"{m} {k}" for m, k in j.parse_failures_by_mode.items() if k)
    text = f"{j.parse_failures} of {j.replies} ({number(j.parse_failure_rate)})"
    return escape(f"{text}: {modes}" if modes else text)


def flipped_items(result: RunResult) -> list[dict[str, Any]]:
    """Items whose pass/fail outcome differs between baseline and candidate."""
    if result.baseline is None:
        return []
    out: list[dict[str, Any]] = []
    cand_items = result.candidate.item_map()
    base_items = result.baseline.item_map()
    for name, metric in result.candidate.metrics.items():
        if metric.kind != "binary" or not metric.paired:
            continue
        ids, cand, base = paired_arrays(result.candidate, result.baseline, name)
        for item_id, c, b in zip(
            ids, cand[:, 0] if len(ids) else [], base[:, 0] if len(ids) else [], strict=True
        ):
            if c != b:
                out.append(
                    {
                        "metric": name,
                        "item_id": item_id,
                        "direction": "fail → pass" if c > b else "pass → fail",
                        "candidate": shown_output(cand_items[item_id]),
                        "baseline": shown_output(base_items[item_id]),
                    }
                )
    out.sort(key=lambda r: (r["direction"] != "pass → fail", r["metric"], r["item_id"]))
    return out


CSS = """
body{font-family:system-ui,sans-serif;margin:24px;max-width:1100px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;width:100%}td,th{border:1px solid #ddd;padding:4px 6px;
text-align:left;vertical-align:top}th{background:#f4f4f4}.pass{color:#2e7d32}.fail{color:#c62828}
.inconclusive,.skipped{color:#ef6c00}.badge{display:inline-block;padding:4px 10px;border-radius:4px;
color:#fff;font-weight:600}.badge.pass{background:#2e7d32}.badge.fail{background:#c62828}
.badge.inconclusive{background:#ef6c00}.badge.none{background:#777}pre{white-space:pre-wrap;margin:0;
font-size:12px}img{max-width:100%}code{font-size:12px}
"""


def _named(subject: SubjectResult) -> str:
    """A subject as the report's title names it: a full fine-tune says so (its identity names the
    kind and the weights' hash), since its version id reads like an adapter's."""
    full = subject.identity.get("kind") == "full"
    return f"{subject.model} (full fine-tune)" if full else subject.model


def html_report(
    result: RunResult, gate: GateResult | None, judge_limits: dict[str, float] | None = None
) -> str:
    decision = gate.decision if gate else "none"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Evaluation {escape(result.run_id)}</title><style>{CSS}</style></head><body>",
        f"<h1>Evaluation {escape(result.run_id)}: {escape(_named(result.candidate))} vs "
        f"{escape(_named(result.baseline) if result.baseline else 'no baseline')}</h1>",
        f"<p><span class='badge {decision}' id='decision'>{escape(decision.upper())}</span> "
        f"data {escape(result.data.get('source', ''))} ({escape(result.data.get('n_used', ''))} items, "
        f"sha256 <code>{escape(str(result.data.get('sha256', ''))[:16])}</code>)</p>",
    ]
    if gate:
        parts.append("<h2>Gate</h2><table><tr><th>metric</th><th>status</th><th>reasons</th></tr>")
        for line in gate.lines:
            parts.append(
                f"<tr><td>{escape(line.metric)}</td><td class='{line.status}'>{line.status}</td>"
                f"<td><pre>{escape(chr(10).join(line.reasons))}</pre></td></tr>"
            )
        parts.append("</table>")
        extra = [r for r in gate.reasons if r.startswith("minimum detectable")]
        if extra:
            parts.append(f"<p>{escape(extra[0])}</p>")
    parts.append(
        "<h2>Metrics</h2><table><tr><th>metric</th><th>candidate</th><th>CI</th>"
        "<th>baseline</th><th>CI</th><th>n</th><th>settings</th></tr>"
    )
    for name, m in result.candidate.metrics.items():
        b = result.baseline.metrics.get(name) if result.baseline else None
        settings = json.dumps(m.settings, sort_keys=True, default=str)
        parts.append(
            f"<tr><td>{escape(name)}{' ↓' if not m.higher_is_better else ''}</td>"
            f"<td>{number(m.value) if m.ok else escape('error: ' + str(m.error))}</td>"
            f"<td>{number(m.ci_low)} – {number(m.ci_high)}</td>"
            f"<td>{number(b.value) if b else '—'}</td>"
            f"<td>{(number(b.ci_low) + ' – ' + number(b.ci_high)) if b else '—'}</td>"
            f"<td>{m.n}</td><td><details><summary>show</summary><pre>{escape(settings)}</pre>"
            "</details></td></tr>"
        )
    parts.append("</table>")
    for title, fig in (
        ("Scores", _fig_scores(result)),
        ("Training loss", _fig_loss(result)),
        ("Judge reliability", _fig_judge(result, judge_limits)),
    ):
        if fig:
            parts.append(f"<h2>{title}</h2><img alt='{escape(title)}' src='{fig}'>")
    if result.judge:
        j = result.judge
        parts.append(
            "<table><tr><th>judge</th><th>prompt</th><th>pairs</th><th>flips</th>"
            "<th>anchors</th><th>parse failures</th></tr>"
            f"<tr><td>{escape(j.judge_model)} @ {escape(j.endpoint)}</td><td>{escape(j.prompt_version)} "
            f"<code>{escape(j.prompt_sha256[:12])}</code></td><td>{j.pairs}</td>"
            f"<td>{j.flips} ({number(j.flip_rate)})</td><td>{j.anchors} "
            f"({number(j.anchor_accuracy)})</td><td>{_parse_failures(j)}</td></tr></table>"
        )
    parts += fewshot_html(result)
    parts += pii_section(result)
    if FORGETTING_METRIC in result.candidate.metrics:
        parts += forgetting_html(result, gate)
    if result.contamination is not None:
        parts.extend(contamination_html(result))
    flips = flipped_items(result)
    parts.append(f"<h2>Flipped items ({len(flips)})</h2>")
    if flips:
        parts.append(
            "<table><tr><th>metric</th><th>item</th><th>change</th><th>candidate output"
            "</th><th>baseline output</th></tr>"
        )
        for f in flips[:FLIP_LIMIT]:
            cls = "fail" if f["direction"] == "pass → fail" else "pass"
            parts.append(
                f"<tr><td>{escape(f['metric'])}</td><td>{escape(f['item_id'])}</td>"
                f"<td class='{cls}'>{escape(f['direction'])}</td><td><pre>{escape(f['candidate'])}</pre>"
                f"</td><td><pre>{escape(f['baseline'])}</pre></td></tr>"
            )
        parts.append("</table>")
        if len(flips) > FLIP_LIMIT:
            parts.append(f"<p>… and {len(flips) - FLIP_LIMIT} more in result.json.</p>")
    else:
        parts.append("<p>No pass/fail item changed between baseline and candidate.</p>")
    timings = ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items())
    parts.append(
        f"<h2>Run</h2><p>timings (s): {escape(timings)}</p><p>versions: "
        f"{escape(json.dumps(result.versions))}</p></body></html>"
    )
    return "".join(parts)


def write_outputs(
    out_dir: Path,
    result: RunResult,
    gate: GateResult | None,
    judge_limits: dict[str, float] | None = None,
) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "result.json",
        "junit": out_dir / "junit.xml",
        "html": out_dir / "report.html",
        "items": out_dir / "items.jsonl",
    }
    paths["json"].write_text(json.dumps(result_json(result, gate), indent=1, default=str))
    paths["junit"].write_text(junit_xml(result, gate))
    paths["html"].write_text(html_report(result, gate, judge_limits))
    with paths["items"].open("w") as fh:
        # The base model's items too when it was scored for the forgetting check alone.
        for subject in [*result.subjects(), *([result.reference] if result.reference else [])]:
            for item in subject.items:
                fh.write(
                    json.dumps(
                        {"subject": subject.role, **item.model_dump(mode="json")},
                        ensure_ascii=False,
                    )
                    + "\n"
                )
    return paths
