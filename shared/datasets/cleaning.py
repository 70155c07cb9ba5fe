"""Text cleaning, exact de-duplication and near-duplicate detection.

Cleaning is conservative: it removes what is never meant to be trained on (HTML tags and entities
left over from scraping, control and zero-width characters, exotic spaces, trailing whitespace, runs
of blank lines) but keeps spacing inside lines and any ``<...>`` that is not an HTML tag
(``List<int>``, ``<|im_end|>``), so JSON and code survive intact.
"""

from __future__ import annotations

import html
import re
import unicodedata
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

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


def clean_text(text: str) -> str:
    """Strip HTML remnants and control characters, and normalise whitespace."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    if "<" in text:
        text = _COMMENT.sub("", text)
        text = _BLOCK_TAG.sub("\n", text)
        text = _ANY_TAG.sub("", text)
    if "&" in text and _ENTITY.search(text):
        text = html.unescape(text)
    text = _CONTROL.sub("", text)
    text = _ODD_SPACES.sub(" ", text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()


# -- near duplicates -------------------------------------------------------------------------
_WORD = re.compile(r"\w+", re.UNICODE)
_PRIME = (1 << 61) - 1
_NUM_PERM = 64
_BANDS = 16


@dataclass(frozen=True)
class NearDuplicate:
    a: int
    b: int
    similarity: float


def _shingles(text: str, n: int = 3) -> set[int]:
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {zlib.crc32(" ".join(words).encode())} if words else set()
    return {zlib.crc32(" ".join(words[i : i + n]).encode()) for i in range(len(words) - n + 1)}


def near_duplicates(texts: Sequence[str], threshold: float = 0.85) -> list[NearDuplicate]:
    """Pairs of texts whose word-3-gram Jaccard similarity is at least ``threshold``.

    MinHash with banding finds candidate pairs in about linear time; each candidate is then checked
    with the exact Jaccard similarity, so reported pairs are never false positives.
    """
    shingle_sets = [_shingles(t) for t in texts]
    rng = np.random.default_rng(1234)  # fixed: the same data always gives the same report
    a = rng.integers(1, _PRIME, size=_NUM_PERM, dtype=np.uint64)
    b = rng.integers(0, _PRIME, size=_NUM_PERM, dtype=np.uint64)
    rows = _NUM_PERM // _BANDS
    buckets: dict[tuple[int, bytes], list[int]] = {}
    for idx, shingles in enumerate(shingle_sets):
        if not shingles:
            continue
        x = np.fromiter(shingles, dtype=np.uint64)
        # (a*x + b) mod p on uint64 wraps, which is fine for hashing: only equality matters.
        sig = ((x[None, :] * a[:, None] + b[:, None]) % _PRIME).min(axis=1)
        for band in range(_BANDS):
            key = (band, sig[band * rows : (band + 1) * rows].tobytes())
            buckets.setdefault(key, []).append(idx)
    candidates: set[tuple[int, int]] = set()
    for members in buckets.values():
        if 1 < len(members) <= 200:
            for i, first in enumerate(members):
                for second in members[i + 1 :]:
                    candidates.add((first, second))
    found = []
    for i, j in sorted(candidates):
        si, sj = shingle_sets[i], shingle_sets[j]
        sim = len(si & sj) / len(si | sj)
        if sim >= threshold:
            found.append(NearDuplicate(i, j, round(sim, 4)))
    return found


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
