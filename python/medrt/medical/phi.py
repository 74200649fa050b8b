"""A detector of patient identifiers from HIPAA's Safe Harbor list (45 CFR 164.514(b)(2)).

A question that carries one is patient context: the semantic cache never stores it and never
answers it. The detector is rules, tuned to favour false alarms (a missed cache hit costs
little; a leaked identifier costs a lot).

Catches: names with a title (Mr, Mrs, Ms, Miss, Dr, Prof, "patient" + a capitalised name);
dates more specific than a year (2021-03-04, 04/03/2021, 3/4/21, "March 4", "4 March 2021",
"4th of March"); ages over 89 ("92-year-old", "aged 95", "age: 101", "93 yo"); phone and fax
numbers; e-mail addresses; street addresses (a number + a name + St/Street/Ave/Road/...);
ZIP codes after a state or the word ZIP; record, account, member, licence and social
security numbers (MRN, SSN, "account number", "record #" + digits); URLs and IP addresses.

Misses: bare names without a title or the word "patient" ("John has a fever"), relatives'
names, free-text places (city names alone), vehicle and device serial numbers, biometric
identifiers, photographs, and identifiers written in unusual formats. Use the request's
``patient_context=True`` whenever the caller knows the text is about a patient.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_MONTH = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|jun(?:e)?|jul(?:y)?|"
          r"aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)")
_STREET = (r"(?:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|way|"
           r"place|pl|terrace|close|crescent|highway|hwy)")

_RULES: dict[str, re.Pattern[str]] = {
    "name": re.compile(
        r"\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof)\.?\s+[A-Z][a-z'-]+"
        r"|\b[Pp]atient\s+(?:named\s+)?[A-Z][a-z'-]+\s+[A-Z][a-z'-]+"
        r"|\b(?:[Mm]y name is|[Nn]amed)\s+[A-Z][a-z'-]+"),
    "date": re.compile(
        r"\b\d{4}-\d{1,2}-\d{1,2}\b|\b\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}\b"
        rf"|\b{_MONTH}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?\b(?!\s*(?:mg|kg|g|ml|%|years?|hours?))"
        rf"|\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH}\b", re.IGNORECASE),
    "age_over_89": re.compile(
        r"\b(?:9\d|1\d\d)[\s-]*(?:years?|yrs?|y)[\s-]*(?:old|of age|/o)\b|\b(?:9\d|1\d\d)\s*yo\b"
        r"|\bage[ds]?\s*:?\s*(?:9\d|1\d\d)\b", re.IGNORECASE),
    "phone": re.compile(
        r"(?<!\d)(?:\+?\d{1,3}[\s.-]?)?\(?\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}(?!\d)"
        r"|\b(?:phone|tel|telephone|fax|mobile|cell)\s*(?:number|no\.?|#)?\s*:?\s*\+?[\d\s().-]{7,}",
        re.IGNORECASE),
    "email": re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b"),
    "address": re.compile(rf"\b\d{{1,5}}\s+(?:[A-Z][a-z]+\s+){{1,3}}{_STREET}\b\.?",
                          re.IGNORECASE),
    "zip": re.compile(r"\b(?:zip(?:\s*code)?\s*:?\s*|[A-Z]{2}\s+)\d{5}(?:-\d{4})?\b"),
    "record_number": re.compile(
        r"\b(?:mrn|ssn|medical record|record|account|acct|member|policy|licen[cs]e|"
        r"insurance|beneficiary|patient id|chart)\s*(?:number|no\.?|#|id)?\s*:?\s*#?\s*"
        r"[A-Z0-9-]*\d[A-Z0-9-]{3,}\b"
        r"|\b\d{3}-\d{2}-\d{4}\b", re.IGNORECASE),
    "url": re.compile(r"\bhttps?://\S+|\bwww\.\S+", re.IGNORECASE),
    "ip_address": re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b"),
}


@dataclass(frozen=True)
class PhiFinding:
    kind: str  # a key of the rules: "name", "date", "age_over_89", ...
    text: str
    start: int
    end: int


def find_phi(text: str) -> list[PhiFinding]:
    """Every Safe Harbor identifier the rules find in `text`, in order of position."""
    out = [PhiFinding(kind, m.group(0), m.start(), m.end())
           for kind, pattern in _RULES.items() for m in pattern.finditer(text)]
    return sorted(out, key=lambda f: (f.start, f.kind))


def has_phi(text: str) -> bool:
    """True when `text` carries any identifier the rules know."""
    return any(p.search(text) for p in _RULES.values())
