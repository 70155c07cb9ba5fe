"""What an adapter's lineage (its manifest, written by the trainer) says it was trained on.

The evaluator reads it to run on the held-out split by default, to compare evaluation items with
the training rows (contamination), to look for training PII in outputs, and to draw the examples
of a few-shot baseline.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from services.evaluator import contamination
from services.evaluator.contamination import TrainingData
from services.evaluator.subjects import Subject
from shared.artifacts import open_store
from shared.datasets.records import Example
from shared.errors import NotFoundError, ValidationError
from shared.registry.models import AdapterVersionRow, DatasetRow
from shared.settings import SharedSettings


def _dig(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _data_file(settings: SharedSettings, session: Session, ref: Any) -> Path | None:
    """A data file the manifest describes as ``{"id", "name", "sha256"}`` (or a bare id)."""
    if isinstance(ref, str):
        ref = {"id": ref}
    if not isinstance(ref, dict):
        return None
    store = open_store(settings)
    sha = ref.get("sha256")
    if isinstance(sha, str) and len(sha) == 64 and store.has_file(sha):
        return store.get_file(sha)
    dataset_id = ref.get("id")
    if isinstance(dataset_id, str) and (row := session.get(DatasetRow, dataset_id)) is not None:
        return store.get_file(row.sha256)
    return None


def training_data_path(
    settings: SharedSettings, session: Session, subject: Subject
) -> tuple[str, Path] | None:
    """(name, stored copy) of the training file in the subject's lineage, or None when it has
    no lineage or the file is not in the store."""
    return _training_file(settings, session, subject.manifest)


def training_files(
    settings: SharedSettings, session: Session, subject: Subject
) -> list[tuple[str, Path]] | str:
    """(name, stored copy) of the subject's training file and of every version it continued from
    (``base_adapter``), own first: an adapter can reproduce what any of them held. Empty when it
    names none; why not when a named file or parent is missing (a check on part of the data
    would pass what the missing part holds)."""
    files: list[tuple[str, Path]] = []
    manifest, label, seen = subject.manifest, subject.label, {subject.version_id}
    while True:
        ref = _dig(manifest, "datasets", "training_file")
        found = _training_file(settings, session, manifest)
        if found is None:
            if not files and not ref:
                return []
            return f"the training file {ref} named in {label}'s lineage is not in the store"
        files.append(found)
        link = _dig(manifest, "base_adapter", "id")
        if not isinstance(link, str) or link in seen or len(seen) > MAX_LINEAGE:
            return files
        seen.add(link)
        parent = session.get(AdapterVersionRow, link)
        if parent is None:
            return f"{subject.label} continues from {link}, which is not in the registry"
        manifest, label = dict(parent.manifest or {}), parent.id


def _training_file(
    settings: SharedSettings, session: Session, manifest: dict[str, Any]
) -> tuple[str, Path] | None:
    # By manifest, not subject: the contamination check also reads the files of parent versions.
    ref = _dig(manifest, "datasets", "training_file")
    path = _data_file(settings, session, ref) if ref else None
    if path is None:
        return None
    name = ref.get("name") if isinstance(ref, dict) else None
    return str(name or path.name), path


def validation_dataset_id(manifest: dict[str, Any]) -> str | None:
    ref = _dig(manifest, "datasets", "validation_file")
    if isinstance(ref, dict):
        return str(ref.get("id") or ref.get("sha256") or "") or None
    return ref if isinstance(ref, str) else None


def validation_data_path(settings: SharedSettings, session: Session, subject: Subject) -> Path:
    """The validation split recorded in the subject's lineage.

    A separate validation file is read from the artifact store. A split held out of the training
    file is rebuilt with the trainer's own code and the manifest's seed, fraction and
    near-duplicate threshold (the split is deterministic), and written next to the eval cache.
    """
    manifest = subject.manifest
    if not manifest:
        raise ValidationError(
            f"{subject.label} has no lineage (base model or no manifest); pass the data "
            "explicitly (--data FILE)",
            param="data",
        )
    ref = _dig(manifest, "datasets", "validation_file")
    if ref:
        path = _data_file(settings, session, ref)
        if path is None:
            raise NotFoundError(
                f"the validation file {ref} named in {subject.label}'s lineage is not in the "
                "artifact store or registry",
                param="data",
            )
        return path
    train_ref = _dig(manifest, "datasets", "training_file")
    train_path = _data_file(settings, session, train_ref) if train_ref else None
    if train_path is None:
        raise ValidationError(
            f"{subject.label} records no validation file and its training file is not in the "
            "artifact store, so the held-out split cannot be rebuilt; pass --data FILE",
            param="data",
        )
    return _rebuild_split(settings, subject, manifest, train_path)


def training_data_config(manifest: dict[str, Any]) -> dict[str, Any]:
    """The ``data`` block of the job spec the adapter was trained with (empty when unknown)."""
    found = _dig(manifest, "config", "spec", "data")
    return found if isinstance(found, dict) else {}


def _rebuild_split(
    settings: SharedSettings, subject: Subject, manifest: dict[str, Any], train_path: Path
) -> Path:
    _train, validation = _held_out_split(manifest, train_path)
    if not validation:
        raise ValidationError(
            f"{subject.label} was trained without a validation split; pass --data FILE",
            param="data",
        )
    out_dir = settings.data_dir / "cache" / "evaluator" / "splits"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{subject.adapter_sha256 or subject.label}-validation.jsonl"
    tmp = out.with_suffix(".tmp")
    with tmp.open("w") as fh:
        for example in validation:
            fh.write(
                json.dumps({"id": example.id, **example.to_record()}, ensure_ascii=False) + "\n"
            )
    tmp.replace(out)
    return out


def _held_out_split(
    manifest: dict[str, Any], train_path: Path
) -> tuple[tuple[Example, ...], tuple[Example, ...]]:
    """(trained on, held out) of a training file split the way the trainer split it."""
    data_cfg = training_data_config(manifest)
    seed = int(_dig(manifest, "config", "hyperparameters", "seed") or 42)
    fraction = float(data_cfg.get("validation_fraction", 0.1))
    threshold = float(data_cfg.get("near_duplicate_threshold", 0.85))
    # Cleaned as the trainer cleaned it, or the rebuilt split (and its references) would differ.
    keep_markup = bool(data_cfg.get("keep_markup", False))
    name = str(_dig(manifest, "datasets", "training_file", "name") or train_path.name)
    stat = train_path.stat()
    return _split(
        str(train_path),
        stat.st_size,
        stat.st_mtime_ns,
        name,
        seed,
        fraction,
        threshold,
        keep_markup,
    )


# A lineage run needs the split twice (its data, and the rows the contamination check compares
# with); the near-duplicate search behind it is the slow part, so the last few are kept.
@lru_cache(maxsize=4)
def _split(
    path: str,
    _size: int,
    _mtime_ns: int,
    name: str,
    seed: int,
    fraction: float,
    threshold: float,
    keep_markup: bool,
) -> tuple[tuple[Example, ...], tuple[Example, ...]]:
    from shared.datasets.cleaning import clusters, near_duplicates
    from shared.datasets.loading import load_examples
    from shared.datasets.prepare import drop_exact_duplicates, split_validation

    loaded = load_examples(path, source=name, keep_markup=keep_markup)
    kept = drop_exact_duplicates(loaded.examples).kept
    near = near_duplicates([e.text() for e in kept], threshold)
    train, validation = split_validation(kept, fraction, seed, clusters(len(kept), near))
    return tuple(train), tuple(validation)


def _trained_examples(
    settings: SharedSettings, session: Session, label: str, manifest: dict[str, Any]
) -> tuple[dict[str, Any], Sequence[Example]] | str:
    """One adapter version's own training examples (without a split held out of them), or why
    there are none."""
    ref = _dig(manifest, "datasets", "training_file")
    if not ref:
        return f"{label}'s lineage names no training data"
    found = _training_file(settings, session, manifest)
    if found is None:
        return f"the training file {ref} named in {label}'s lineage is not in the store"
    name, path = found
    source: dict[str, Any] = {"file": name, "sha256": _dig(ref, "sha256"), "id": _dig(ref, "id")}
    examples: Sequence[Example]
    try:
        if _dig(manifest, "datasets", "validation_file"):
            from shared.datasets.loading import load_examples

            keep_markup = bool(training_data_config(manifest).get("keep_markup", False))
            examples = load_examples(path, source=name, keep_markup=keep_markup).examples
        else:
            examples, held_out = _held_out_split(manifest, path)
            source["held_out_rows"] = len(held_out)
    except ValidationError as exc:
        return f"the training file {name} of {label} cannot be read: {exc.message}"
    return source, examples


def trained_examples(
    settings: SharedSettings, session: Session, subject: Subject
) -> Sequence[Example] | str:
    """The examples the subject itself was trained on (not its parents'), or why there are none."""
    found = _trained_examples(settings, session, subject.label, subject.manifest)
    return found if isinstance(found, str) else found[1]


def _trained_rows(
    settings: SharedSettings, session: Session, label: str, manifest: dict[str, Any]
) -> tuple[dict[str, Any], list[contamination.TrainingRow]] | str:
    found = _trained_examples(settings, session, label, manifest)
    if isinstance(found, str):
        return found
    return found[0], [contamination.training_row(e) for e in found[1]]


MAX_LINEAGE = 32  # continued-training chains longer than this are a loop in the manifests


def training_data(
    settings: SharedSettings, session: Session, subject: Subject
) -> TrainingData | str:
    """The rows the subject was trained on, for the contamination check, or why there are none.

    When the trainer held a validation split out of the training file, those rows were not trained
    on (and are what a lineage evaluation runs on), so the split is rebuilt and only the rest kept.
    An adapter continued from another (``base_adapter``) was trained on that one's rows too, so
    the chain is followed; a link whose data cannot be read makes the whole answer "why not", since
    a check on part of the data would pass items the missing part holds.
    """
    found = _trained_rows(settings, session, subject.label, subject.manifest)
    if isinstance(found, str):
        return found
    source, rows = found
    parents: list[dict[str, Any]] = []
    link = _dig(subject.manifest, "base_adapter", "id")
    seen = {subject.version_id}
    while isinstance(link, str) and link not in seen and len(seen) <= MAX_LINEAGE:
        seen.add(link)
        parent = session.get(AdapterVersionRow, link)
        if parent is None:
            return f"{subject.label} continues from {link}, which is not in the registry"
        more = _trained_rows(settings, session, parent.id, dict(parent.manifest or {}))
        if isinstance(more, str):
            return f"{subject.label} continues from {parent.id}: {more}"
        parents.append({"version": parent.id, **more[0]})
        rows += more[1]
        link = _dig(parent.manifest, "base_adapter", "id")
    if parents:
        source["continued_from"] = parents
    return TrainingData(source, rows)


def loss_curve(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """``[{"step", "loss"}, ...]`` from the manifest's ``loss_curve`` (``[[step, loss], ...]`` as
    the trainer writes it, or already as mappings), or empty."""
    raw = manifest.get("loss_curve") or _dig(manifest, "training", "loss_curve") or []
    out: list[dict[str, Any]] = []
    for point in raw if isinstance(raw, list) else []:
        if isinstance(point, list | tuple) and len(point) >= 2:
            out.append({"step": point[0], "loss": point[1]})
        elif isinstance(point, dict) and "step" in point:
            out.append(point)
    return out
