"""Text cleaning, exact de-duplication and near-duplicate detection.

Cleaning is conservative: it removes what is never meant to be trained on (HTML tags and entities
left over from scraping, control and zero-width characters, exotic spaces, trailing whitespace, runs
of blank lines) but keeps spacing inside lines and any ``<...>`` that is not an HTML tag
(``List<int>``, ``<|im_end|>``), so JSON and code survive intact. A :class:`Cleaner` counts what
it changed in assistant targets, and ``keep_markup`` keeps HTML for tasks whose output is HTML.
"""

from __future__ import annotations

import html
import itertools
import re
import unicodedata
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_HTML_TAGS = (
    "a|abbr|b|big|blockquote|body|br|center|code|dd|div|dl|dt|em|font|h[1-6]|head|hr|html|i|img|"
    "li|ol|p|pre|small|span|strong|sub|sup|table|tbody|td|th|thead|tr|tt|u|ul"
)
_BLOCK_TAG = re.compile(r"<\s*(?:br|p|div|li|tr|h[1-6])\b[^<>]*/?>", re.IGNORECASE)
_ANY_TAG = re.compile(rf"</?\s*(?:{_HTML_TAGS})\b[^<>]*/?>", re.IGNORECASE)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_ENTITY = re.compile(r"&(?:#\d{1,7}|#x[0-9a-fA-F]{1,6}|[a-zA-Z][a-zA-Z0-9]{1,31});")
# C0/C1 controls except tab and newline, plus zero-width and bidi-override characters.
_CONTROL = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]"
)
_ODD_SPACES = re.compile("[\u00a0\u2000-\u200a\u202f\u205f\u3000]")
_MANY_NEWLINES = re.compile(r"\n{3,}")


# What cleaning can change, in the order it is done; reported per kind for assistant targets.
CHANGE_KINDS = ("html_markup", "html_entities", "control_chars", "odd_spaces", "whitespace")


def clean_text_changes(text: str, *, keep_markup: bool = False) -> tuple[str, list[str]]:
    """:func:`clean_text`, plus which of :data:`CHANGE_KINDS` changed the text.

    ``keep_markup`` keeps HTML tags, comments and entities: for tasks whose output *is* HTML,
    where stripping would teach the model to drop its own markup."""
    changes: list[str] = []
    before = text
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    newline_or_nfc = text != before
    if not keep_markup:
        if "<" in text:
            step = _ANY_TAG.sub("", _BLOCK_TAG.sub("\n", _COMMENT.sub("", text)))
            if step != text:
                changes.append("html_markup")
            text = step
        if "&" in text and _ENTITY.search(text):
            step = html.unescape(text)
            if step != text:
                changes.append("html_entities")
            text = step
    for kind, pattern, repl in (
        ("control_chars", _CONTROL, ""),
        ("odd_spaces", _ODD_SPACES, " "),
    ):
        step = pattern.sub(repl, text)
        if step != text:
            changes.append(kind)
        text = step
    step = "\n".join(line.rstrip() for line in text.split("\n"))
    step = _MANY_NEWLINES.sub("\n\n", step).strip()
    if newline_or_nfc or step != text:
        changes.append("whitespace")
    return step, changes


def clean_text(text: str, *, keep_markup: bool = False) -> str:
    """Strip HTML remnants (unless ``keep_markup``) and control characters, and normalise
    whitespace."""
    return clean_text_changes(text, keep_markup=keep_markup)[0]


@dataclass
class Cleaner:
    """Cleans the fields of one file and counts what cleaning changed in assistant targets (the
    replies a model is trained on, or scored against), so a file whose answers lose their HTML
    says so instead of silently training a model that drops markup."""

    keep_markup: bool = False
    targets: int = 0
    changed: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)  # where, the first few changed targets

    def clean(self, text: str, *, target: bool = False, where: str = "") -> str:
        cleaned, changes = clean_text_changes(text, keep_markup=self.keep_markup)
        if target:
            self.targets += 1
            if changes:
                self.changed += 1
                for kind in changes:
                    self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
                if len(self.examples) < MAX_REPORTED and where:
                    self.examples.append(f"{where} ({', '.join(changes)})")
        return cleaned

    def report(self) -> dict[str, Any]:
        return {
            "keep_markup": self.keep_markup,
            "assistant_targets": self.targets,
            "assistant_targets_changed": self.changed,
            "by_kind": {k: self.by_kind[k] for k in CHANGE_KINDS if k in self.by_kind},
            "examples": list(self.examples),
        }


MAX_REPORTED = 20


# -- near duplicates -------------------------------------------------------------------------
_WORD = re.compile(r"\w+", re.UNICODE)
_PRIME = (1 << 61) - 1
_NUM_PERM = 64
_BANDS = 16
_ROWS = _NUM_PERM // _BANDS
_MAX_BUCKET = 200  # a band bucket larger than this is a common template, not a near-duplicate
_VERIFY_BATCH = 1 << 20  # partner shingles looked up per numpy call
_SIG_BLOCK = 1024  # texts whose signatures are turned into band keys together
_SIG_CHUNK = 4096  # shingles hashed at once: bounds the (permutations x shingles) temporary

# Bounds that keep the search linear in memory and time whatever the data: one 20 MB example
# costs what a 32 KiB one does, and a file of near-identical templates cannot explode into
# billions of pair checks. Both trainer and evaluator call this with the defaults, so they find
# the same pairs and rebuild the same validation split.
MAX_CHARS = 32 * 1024  # per text: the first and the last half of this many characters
MAX_CANDIDATES = 250_000  # candidate pairs collected from the MinHash bands
MAX_COMPARED = 50_000_000  # shingles compared while checking candidates exactly


@dataclass(frozen=True, slots=True)
class NearDuplicate:
    a: int
    b: int
    similarity: float


@dataclass(frozen=True)
class NearDuplicateSearch:
    pairs: list[NearDuplicate]
    # False when a work bound stopped the search early: ``pairs`` is then a subset.
    complete: bool
    clipped_texts: int  # texts longer than ``max_chars``, compared on their head and tail


def _clip(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    half = max_chars // 2
    return text[:half] + "\n" + text[-half:]


def _shingles(text: str, n: int = 3) -> np.ndarray:
    """Sorted, distinct crc32 hashes of the text's word n-grams (uint32: 4 bytes each)."""
    words = _WORD.findall(text.lower())
    if len(words) < n:
        found = {zlib.crc32(" ".join(words).encode())} if words else set()
    else:
        found = {zlib.crc32(" ".join(words[i : i + n]).encode()) for i in range(len(words) - n + 1)}
    return np.array(sorted(found), dtype=np.uint32)


def _signature(shingles: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The MinHash signature: per permutation, the smallest permuted shingle."""
    sig = np.full(_NUM_PERM, np.iinfo(np.uint64).max, dtype=np.uint64)
    for start in range(0, len(shingles), _SIG_CHUNK):
        x = shingles[start : start + _SIG_CHUNK].astype(np.uint64)
        # (a*x + b) mod p on uint64 wraps, which is fine for hashing: only equality matters.
        np.minimum(sig, ((x[None, :] * a[:, None] + b[:, None]) % _PRIME).min(axis=1), out=sig)
    return sig


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection on 64 bits that spreads every input bit."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    mixed: np.ndarray = z ^ (z >> np.uint64(31))
    return mixed


def _band_keys(signatures: np.ndarray) -> np.ndarray:
    """(texts, bands) keys: one 64-bit hash of each band's rows, so equal bands give equal keys
    (and unequal ones collide with odds of about 2**-64) in 8 bytes instead of 32."""
    rows = signatures.reshape(len(signatures), _BANDS, _ROWS)
    keys = np.zeros(rows.shape[:2], dtype=np.uint64)
    for r in range(_ROWS):
        keys = _mix(keys ^ rows[:, :, r])
    return keys


def _candidates(keys: np.ndarray, active: np.ndarray, limit: int) -> tuple[np.ndarray, bool]:
    """Sorted distinct pair codes ``i * n + j`` (i < j) of active items sharing a band bucket,
    and whether all were collected within ``limit``."""
    n = keys.shape[0]
    found: list[np.ndarray] = []
    total = 0
    complete = True
    for band in range(_BANDS):
        order = active[np.argsort(keys[active, band], kind="stable")]
        ordered = keys[order, band]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        ends = np.r_[starts[1:], len(order)]
        sizes = ends - starts
        keep = (sizes > 1) & (sizes <= _MAX_BUCKET)
        for lo, hi in zip(starts[keep].tolist(), ends[keep].tolist(), strict=True):
            members = np.sort(order[lo:hi]).astype(np.int64)
            i, j = np.triu_indices(len(members), k=1)
            if total + len(i) > limit:
                complete = False
                break
            found.append(members[i] * n + members[j])
            total += len(i)
        if not complete:
            break
    codes = np.unique(np.concatenate(found)) if found else np.empty(0, np.int64)
    return codes, complete


def _verify(
    codes: np.ndarray,
    n: int,
    flat: np.ndarray,
    offsets: np.ndarray,
    threshold: float,
    max_compared: int,
) -> tuple[list[NearDuplicate], bool]:
    """Exact Jaccard of each candidate pair, in code order, a batch of partners at a time (one
    numpy call per batch, not per pair); False once ``max_compared`` shingles were looked up."""
    lengths = np.diff(offsets)
    found: list[NearDuplicate] = []
    compared = 0
    firsts = codes // n
    starts = np.flatnonzero(np.r_[True, firsts[1:] != firsts[:-1]]).tolist() if len(codes) else []
    bounds = [*starts, len(codes)]
    for lo, hi in itertools.pairwise(bounds):
        i = int(firsts[lo])
        si = flat[offsets[i] : offsets[i + 1]]
        partners = codes[lo:hi] % n
        while len(partners):
            sizes = lengths[partners]
            take = max(1, int(np.searchsorted(np.cumsum(sizes), _VERIFY_BATCH, side="right")))
            batch, sizes, partners = partners[:take], sizes[:take], partners[take:]
            compared += len(si) + int(sizes.sum())
            if compared > max_compared:
                return found, False
            # Every shingle of the batch's partners, looked up in the sorted shingles of i.
            begin = np.repeat(offsets[batch] - np.r_[0, np.cumsum(sizes)[:-1]], sizes)
            values = flat[begin + np.arange(int(sizes.sum()))]
            pos = np.minimum(np.searchsorted(si, values), len(si) - 1)
            hits = (si[pos] == values).astype(np.int64)
            common = np.add.reduceat(hits, np.r_[0, np.cumsum(sizes)[:-1]])
            sims = common / (len(si) + sizes - common)
            hit = np.flatnonzero(sims >= threshold)
            for j, sim in zip(batch[hit].tolist(), sims[hit].tolist(), strict=True):
                found.append(NearDuplicate(i, j, round(sim, 4)))
    return found, True


def find_near_duplicates(
    texts: Sequence[str],
    threshold: float = 0.85,
    *,
    max_chars: int = MAX_CHARS,
    max_candidates: int = MAX_CANDIDATES,
    max_compared: int = MAX_COMPARED,
) -> NearDuplicateSearch:
    """Pairs of texts whose word-3-gram Jaccard similarity is at least ``threshold``.

    MinHash with banding finds candidate pairs in about linear time; each candidate is then checked
    with the exact Jaccard similarity (of the compared characters), so reported pairs are never
    false positives. Memory is a few bytes per shingle plus a fixed amount per text; the bounds
    above stop the search early (``complete=False``) rather than let a crafted file take hours.
    """
    rng = np.random.default_rng(1234)  # fixed: the same data always gives the same report
    a = rng.integers(1, _PRIME, size=_NUM_PERM, dtype=np.uint64)
    b = rng.integers(0, _PRIME, size=_NUM_PERM, dtype=np.uint64)
    n = len(texts)
    keys = np.zeros((n, _BANDS), dtype=np.uint64)
    has_shingles = np.zeros(n, dtype=bool)
    parts: list[np.ndarray] = []
    clipped = 0
    # Signatures are hashed into band keys a block of texts at a time (8 bytes per band kept).
    block = np.zeros((_SIG_BLOCK, _NUM_PERM), dtype=np.uint64)
    for idx, text in enumerate(texts):
        clipped += len(text) > max_chars
        shingles = _shingles(_clip(text, max_chars))
        parts.append(shingles)
        has_shingles[idx] = len(shingles) > 0
        block[idx % _SIG_BLOCK] = _signature(shingles, a, b)
        if idx % _SIG_BLOCK == _SIG_BLOCK - 1 or idx == n - 1:
            first = idx - idx % _SIG_BLOCK
            keys[first : idx + 1] = _band_keys(block[: idx + 1 - first])
    # One flat array with offsets instead of a set per text: ~4 bytes per shingle, not ~70.
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([len(p) for p in parts], out=offsets[1:])
    flat = np.concatenate(parts) if parts else np.empty(0, np.uint32)
    del parts
    # Texts without words never pair.
    codes, complete = _candidates(keys, np.flatnonzero(has_shingles), max_candidates)
    found, finished = _verify(codes, n, flat, offsets, threshold, max_compared)
    complete = complete and finished
    return NearDuplicateSearch(found, complete, clipped)


def near_duplicates(texts: Sequence[str], threshold: float = 0.85) -> list[NearDuplicate]:
    """The pairs of :func:`find_near_duplicates` with its default bounds."""
    return find_near_duplicates(texts, threshold).pairs


def clusters(n: int, pairs: Sequence[NearDuplicate]) -> list[int]:
    """Cluster id per item (union-find over the pairs), so near-duplicates stay on one split side."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for pair in pairs:
        ra, rb = find(pair.a), find(pair.b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [find(i) for i in range(n)]
