"""PII detectors: e-mail addresses, phone numbers, payment cards, IBANs, national identifiers,
IP addresses and person names, in pure Python (``re`` and ``ipaddress``).

Every detector pairs a linear-time candidate pattern (bounded repetitions only, so a crafted
upload cannot make the API backtrack for minutes) with a validator that rejects what merely looks
like PII:

- ``email``: RFC-shaped address; documentation domains (RFC 2606/6761: example.com/.net/.org,
  .example, .test, .invalid, .localhost) and file names such as ``icon@2x.png`` are not PII.
- ``phone``: ``+`` followed by 8-15 digits (E.164), a North American 3-3-4 number, or a national
  number with trunk prefix 0 (10-11 digits, e.g. UK ``020 7946 0958``); any 7-15 digit number
  right after a cue word (``phone``, ``tel``, ``call``, ...). Dates, ISBNs, versions and bare
  digit runs without a cue are not phones.
- ``card``: 13-19 digits that pass the Luhn check and start with a card network's prefix.
- ``iban``: country code, check digits and the country's registered length, mod-97 == 1.
- ``national_id``: US SSN (``ddd-dd-dddd`` with the SSA's allocation rules; SSNs have no check
  digit), UK National Insurance number (prefix and suffix rules; no check digit), Spanish DNI/NIE
  (mod-23 check letter).
- ``ip_address``: IPv4/IPv6 that :mod:`ipaddress` parses and calls global: private, loopback,
  link-local and documentation ranges identify nobody; version strings (``v1.2.3.4``) are skipped.
- ``person_name``: a heuristic, not a model: a title (``Dr. Ada Lovelace``), a cue (``my name
  is``, ``Dear``, ``Regards,``) or a given name from a short list followed by a capitalised
  surname. It misses names without such context and given names not on the list (the list is
  short and cannot cover every culture), so its recall on real text is lower than on the labelled
  set in the tests; treat its findings as a hint.

:func:`detect` returns non-overlapping :class:`Finding` s (where two detectors claim the same
characters, the one listed first in :data:`KINDS` wins); :func:`redact` replaces them with
placeholders such as ``[EMAIL]``; :func:`canonical` gives the form two mentions of the same PII
share (``555-123-4567`` and ``+1 (555) 123 4567``), used to match outputs against training data.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

# The validators are re-exported: callers and tests import them from here.
from shared.pii_checks import IBAN_LENGTHS as IBAN_LENGTHS
from shared.pii_checks import card_network as card_network
from shared.pii_checks import dni_ok as dni_ok
from shared.pii_checks import iban_ok as iban_ok
from shared.pii_checks import luhn_ok as luhn_ok
from shared.pii_checks import nino_ok as nino_ok
from shared.pii_checks import ssn_ok as ssn_ok

Kind = Literal["email", "card", "iban", "national_id", "phone", "ip_address", "person_name"]
# Priority order: on overlapping spans the earlier kind wins (a Luhn-valid card number is not
# also a phone number).
KINDS: tuple[Kind, ...] = (
    "email",
    "card",
    "iban",
    "national_id",
    "phone",
    "ip_address",
    "person_name",
)
PLACEHOLDERS: dict[Kind, str] = {
    "email": "[EMAIL]",
    "card": "[CARD]",
    "iban": "[IBAN]",
    "national_id": "[NATIONAL_ID]",
    "phone": "[PHONE]",
    "ip_address": "[IP]",
    "person_name": "[NAME]",
}


@dataclass(frozen=True, slots=True)
class Finding:
    kind: Kind
    start: int
    end: int
    text: str
    detail: str = ""  # which rule matched: card network, id scheme, ip version, name cue

    @property
    def span(self) -> tuple[int, int]:
        return self.start, self.end


# -- e-mail ----------------------------------------------------------------------------------
_EMAIL = re.compile(
    r"(?<![\w.+%-])([A-Za-z0-9][A-Za-z0-9._%+-]{0,63})@"
    r"((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,8}[A-Za-z]{2,24})(?![\w-])"
)
_RESERVED_DOMAINS = ("example.com", "example.net", "example.org")
_RESERVED_TLDS = ("example", "test", "invalid", "localhost")
# ``name@2x.png``: retina image names and the like share the address shape.
_FILE_TLDS = frozenset(
    """
    png jpg jpeg gif svg webp bmp ico pdf js ts css html py json yaml yml md txt csv zip gz
    """.split()  # noqa: SIM905 (a word list reads better as text than as quoted strings)
)


def _emails(text: str) -> Iterator[Finding]:
    for m in _EMAIL.finditer(text):
        local, domain = m.group(1), m.group(2).lower()
        tld = domain.rsplit(".", 1)[-1]
        if ".." in local or local.endswith(".") or tld in _FILE_TLDS:
            continue
        if domain in _RESERVED_DOMAINS or domain.endswith(
            tuple("." + d for d in _RESERVED_DOMAINS)
        ):
            continue
        if tld in _RESERVED_TLDS:
            continue
        yield Finding("email", m.start(), m.end(), m.group(0))


# -- payment cards -----------------------------------------------------------------------------
_CARD = re.compile(r"(?<![\w+-])\d(?:[ -]?\d){12,18}(?![\w-])")


def _cards(text: str) -> Iterator[Finding]:
    for m in _CARD.finditer(text):
        raw = m.group(0)
        seps = {c for c in raw if not c.isdigit()}
        if len(seps) > 1:  # "1234-5678 9012" mixes separators: not how a card is written
            continue
        digits = re.sub(r"\D", "", raw)
        network = card_network(digits)
        if network is not None and luhn_ok(digits):
            yield Finding("card", m.start(), m.end(), raw, network)


# -- IBAN --------------------------------------------------------------------------------------
_IBAN = re.compile(r"(?<![A-Za-z0-9])([A-Z]{2})(\d{2})((?: ?[A-Z0-9]){11,30})")


def _ibans(text: str) -> Iterator[Finding]:
    for m in _IBAN.finditer(text):
        country = m.group(1)
        want = IBAN_LENGTHS.get(country)
        if want is None:
            continue
        # The pattern may run on into the next word ("... 3000 THANKS"): keep exactly the
        # country's length, which must end at a word boundary.
        kept, end = 4, m.start(3)
        while kept < want and end < m.end():
            if text[end] != " ":
                kept += 1
            end += 1
        if kept < want or (end < len(text) and text[end].isalnum()):
            continue
        raw = text[m.start() : end]
        if iban_ok(raw.replace(" ", "")):
            yield Finding("iban", m.start(), end, raw, country)


# -- national identifiers ------------------------------------------------------------------------
_SSN = re.compile(r"(?<![\w-])(\d{3})-(\d{2})-(\d{4})(?![\w-])")
_NINO = re.compile(r"(?<![A-Za-z0-9])([A-Z]{2}) ?(\d{2}) ?(\d{2}) ?(\d{2}) ?([A-D])(?![A-Za-z0-9])")
_DNI = re.compile(r"(?<![A-Za-z0-9-])([XYZ]?)(\d{7,8})-?([A-Z])(?![A-Za-z0-9-])")


def _national_ids(text: str) -> Iterator[Finding]:
    for m in _SSN.finditer(text):
        if ssn_ok(m.group(1), m.group(2), m.group(3)):
            yield Finding("national_id", m.start(), m.end(), m.group(0), "us_ssn")
    for m in _NINO.finditer(text):
        if nino_ok(m.group(1)):
            yield Finding("national_id", m.start(), m.end(), m.group(0), "uk_nino")
    for m in _DNI.finditer(text):
        if dni_ok(m.group(1), m.group(2), m.group(3)):
            yield Finding("national_id", m.start(), m.end(), m.group(0), "es_dni")


# -- phone numbers ----------------------------------------------------------------------------
_PHONE = re.compile(r"(?<![\w+./-])(\+?\(?\d[\d ().-]{5,24}\d)(?![\w])(?!\.\d)")
_PHONE_CUE = re.compile(
    r"(?:phone|tel|telephone|mobile|cell|call|fax|whatsapp|sms|text|ring)(?:\s*me)?"
    r"(?:\s*(?:no\.?|number|#))?\s*(?:is|at|on)?\s*[:.]?\s*$",
    re.IGNORECASE,
)
_NANP = re.compile(r"(?:\+?1[ .-]?)?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}")
_GROUPED = re.compile(r"\(?\d{1,6}\)?(?:[ .-]\(?\d{1,6}\)?)*")
# "AA1 01 2345 6784": digits right after a word holding digits continue a code, not a phone.
_CODE_BEFORE = re.compile(r"\w*\d\w* $")


def _phone_shape(raw: str, digits: str, cued: bool) -> str | None:
    body = raw.removeprefix("+")
    separators = set(re.sub(r"[\d()]", "", body))
    if body.count("(") != body.count(")"):
        return None
    if raw.startswith("+"):
        # International numbers mix spaces and dashes ("+55 11 98765-4321"), never dots too.
        ok = 8 <= len(digits) <= 15 and separators <= {" ", "-"}
        return "e164" if ok and _GROUPED.fullmatch(body) else None
    if len(separators) > 1 + ("(" in body):
        return None  # separators mixed beyond "(555) 123-4567"
    if _NANP.fullmatch(raw) and digits[-10] in "23456789":
        return "nanp"
    if digits[0] == "0" and 10 <= len(digits) <= 11 and _GROUPED.fullmatch(raw):
        groups = re.split(r"[ .()-]+", raw.strip("()"))
        if len(groups) > 1 and all(2 <= len(g) <= 6 for g in groups):
            return "national"
    if cued and 7 <= len(digits) <= 15:
        return "cued"  # the candidate pattern already allows only digits, spaces and .-()
    return None


def _phones(text: str) -> Iterator[Finding]:
    for m in _PHONE.finditer(text):
        raw = m.group(1).rstrip(" .-")
        # A closing parenthesis that opens nothing belongs to the sentence, not the number.
        while raw.endswith(")") and raw.count(")") > raw.count("("):
            raw = raw[:-1].rstrip(" .-")
        digits = re.sub(r"\D", "", raw)
        before = text[max(0, m.start() - 40) : m.start()]
        if _CODE_BEFORE.search(before):
            continue
        cued = bool(_PHONE_CUE.search(before))
        shape = _phone_shape(raw, digits, cued)
        if shape is not None:
            yield Finding("phone", m.start(), m.start() + len(raw), raw, shape)


# -- IP addresses --------------------------------------------------------------------------------
_IPV4 = re.compile(r"(?<![\w.])(\d{1,3}(?:\.\d{1,3}){3})(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])((?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4})(?![\w:])")
# Dotted numbers after these words are versions or section numbers, not addresses.
_VERSION_CUE = re.compile(
    r"(?:\bv|version|\bver\.?|release|build|firmware|\bOID|section|chapter|clause|§|step|rule)"
    r"\s*$",
    re.I,
)


def _ips(text: str) -> Iterator[Finding]:
    for pattern, version in ((_IPV4, "ipv4"), (_IPV6, "ipv6")):
        for m in pattern.finditer(text):
            raw = m.group(1)
            if version == "ipv6" and raw.count(":") < 2:
                continue
            if _VERSION_CUE.search(text[max(0, m.start() - 12) : m.start()]):
                continue
            try:
                address = ipaddress.ip_address(raw)
            except ValueError:
                continue
            if version == "ipv4" and any(len(p) > 1 and p[0] == "0" for p in raw.split(".")):
                continue  # leading zeros: a version or a code, not how addresses are written
            if address.is_global:
                yield Finding("ip_address", m.start(), m.end(), raw, version)


# -- person names (heuristic) ----------------------------------------------------------------------
# Given names common across English-, Spanish-, French-, German-, Italian-, Portuguese-, Arabic-,
# Indian-, Chinese- and Nigerian-speaking populations, minus those that are also everyday words
# (Will, May, June, Bill, Mark, Rose, Grace, Hope, Faith, Joy, Summer, Victoria, Art, Guy, Max).
GIVEN_NAMES = frozenset(
    """
    aaron abdul abdullah adam adebayo adriana ahmed aisha alan albert alejandro alex alexander
    alexandra ali alice alicia amanda amina amit amy ana andrea andrew angela anil anita ann anna
    anne anthony antonio arjun arun ashley barbara ben benjamin beth betty brandon brian carlos
    carmen carol caroline catherine charles charlotte chen chinedu chloe christine christopher
    claire claudia daniel david deborah deepak diana diego dmitri donald dorothy edward elena
    elizabeth emily emma eric fatima fernando francesca francisco frank gabriel gary george giulia
    giuseppe hannah hans harry heather helen henry hiroshi hugo ian isabel isabella jacob james
    jane janet jason javier jean jennifer jessica joao john jonathan jorge jose joseph joshua juan
    julia julie karen kate katherine kenji kevin kimberly laura lauren li linda lisa lucas lucia
    luis lukas maria marie mario martin mary matthew mehmet mei michael michelle mohammed
    muhammad nancy natalia nicholas nicole ngozi oliver olivia omar pablo patricia paul pedro
    peter pierre priya rachel rahul rajesh rebecca richard robert ronald ryan samuel sandra
    sarah scott sean sergei sharon sophia sophie stephanie stephen steven susan thomas timothy
    tunde valentina wang wei william xavier yuki yusuf zhang
    """.split()  # noqa: SIM905 (a word list reads better as text than as 200 quoted strings)
)
_TITLES = r"(?:Mr|Mrs|Ms|Mx|Miss|Dr|Prof|Professor|Sir|Dame|Herr|Frau|Mme|Mlle|Sr|Sra)"
# Latin-1 letters too ("Müller", "José"); an apostrophe may join a capital ("O'Neill").
_UP, _LOW = "A-ZÀ-ÖØ-Þ", "a-zß-öø-ÿ"
_CAP = rf"[{_UP}](?:['’][{_UP}])?[{_LOW}]{{1,20}}(?:-[{_UP}][{_LOW}]{{1,20}})?"
_NAME_TAIL = rf"{_CAP}(?: {_CAP}){{0,2}}"
_TITLED = re.compile(rf"\b{_TITLES}\.? ({_NAME_TAIL})")
_CUED = re.compile(
    r"(?:\b[Mm]y name is|\b[Nn]ame:|\b[Dd]ear|\b(?:[Rr]egards|[Ss]incerely|[Cc]heers|[Tt]hanks),?\n"
    rf"|\b[Ss]igned(?: by)?:?|\b[Tt]his is) ({_NAME_TAIL})"
)
# A lookahead, so "Ask Sergei Ivanov" is tried at "Sergei" too, not only at "Ask".
_GIVEN = re.compile(rf"\b(?=({_CAP}) ({_CAP})\b)")
# Capitalised words that follow a cue without being a name ("Dear Customer", "This is Support").
_NOT_NAMES = frozenset(
    """
    customer customers team support sir madam all everyone friend friends colleague colleagues
    user users client sales admin manager hiring recruiter the a an our your my this that it
    thanks thank hello hi regards best kind warm yes no not
    """.split()  # noqa: SIM905 (a word list reads better as text than as 200 quoted strings)
)


def _trim_name(name: str) -> str:
    words = name.split(" ")
    while words and words[-1].lower() in _NOT_NAMES:
        words.pop()
    return " ".join(words)


def _names(text: str) -> Iterator[Finding]:
    for pattern, rule in ((_TITLED, "title"), (_CUED, "cue")):
        for m in pattern.finditer(text):
            name = _trim_name(m.group(1))
            if not name or name.split(" ")[0].lower() in _NOT_NAMES:
                continue
            start = m.start(1) if rule == "cue" else m.start()
            yield Finding(
                "person_name",
                start,
                m.start(1) + len(name),
                text[start : m.start(1) + len(name)],
                rule,
            )
    for m in _GIVEN.finditer(text):
        if m.group(1).lower() in GIVEN_NAMES and m.group(2).lower() not in _NOT_NAMES:
            start, end = m.start(1), m.end(2)
            yield Finding("person_name", start, end, text[start:end], "given_name")


# -- the public functions ------------------------------------------------------------------------
DETECTORS: dict[Kind, Callable[[str], Iterable[Finding]]] = {
    "email": _emails,
    "card": _cards,
    "iban": _ibans,
    "national_id": _national_ids,
    "phone": _phones,
    "ip_address": _ips,
    "person_name": _names,
}


def detect(text: str, kinds: Iterable[str] | None = None) -> list[Finding]:
    """Non-overlapping findings in ``text``, in text order (``kinds``: which detectors; all by
    default). On overlap the kind earlier in :data:`KINDS` wins, then the longer span."""
    wanted = set(KINDS if kinds is None else kinds)
    unknown = wanted - set(KINDS)
    if unknown:
        raise ValueError(f"unknown PII kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    found: list[Finding] = []
    for kind in KINDS:
        if kind in wanted:
            found.extend(DETECTORS[kind](text))
    rank_of = {k: i for i, k in enumerate(KINDS)}
    found.sort(key=lambda f: (rank_of[f.kind], -(f.end - f.start), f.start))
    # Kept spans never overlap, so sorted by start they are sorted by end too: a new span
    # overlaps one only if it overlaps its neighbour on either side (bisect, not a scan).
    starts: list[int] = []
    kept: list[Finding] = []
    for f in found:
        at = bisect.bisect_left(starts, f.start)
        if at > 0 and kept[at - 1].end > f.start:
            continue
        if at < len(kept) and kept[at].start < f.end:
            continue
        starts.insert(at, f.start)
        kept.insert(at, f)
    return kept


def redact(text: str, kinds: Iterable[str] | None = None) -> tuple[str, list[Finding]]:
    """``text`` with each finding replaced by its kind's placeholder, and the findings."""
    findings = detect(text, kinds)
    if not findings:
        return text, findings
    parts: list[str] = []
    pos = 0
    for f in findings:
        parts.append(text[pos : f.start])
        parts.append(PLACEHOLDERS[f.kind])
        pos = f.end
    parts.append(text[pos:])
    return "".join(parts), findings


def canonical(finding: Finding) -> str:
    """The form two mentions of one piece of PII share, prefixed with its kind."""
    text = finding.text
    if finding.kind == "email":
        value = text.casefold()
    elif finding.kind == "phone":
        # The last ten digits: "+44 20 7946 0958" and "020 7946 0958", "+1 555 123 4567" and
        # "(555) 123-4567" name the same line (country code and trunk prefix dropped).
        value = re.sub(r"\D", "", text)[-10:]
    elif finding.kind in ("card", "iban", "national_id"):
        value = re.sub(r"[^0-9A-Za-z]", "", text).upper()
    elif finding.kind == "ip_address":
        value = str(ipaddress.ip_address(text))
    else:
        value = " ".join(text.split()).casefold()
        if finding.detail == "title":
            value = value.split(" ", 1)[-1]  # "Dr. Ada Lovelace" and "Ada Lovelace" match
    return f"{finding.kind}:{value}"
