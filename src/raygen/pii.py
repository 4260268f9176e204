"""PII redaction, one module for data curation and for the serving safety filter: secrets, emails,
payment cards, IP addresses, phone numbers. Pure Python.

Each match becomes its kind's placeholder (`<SECRET>`, `<EMAIL>`, `<CARD>`, `<IP>`, `<PHONE>`), so a model
learns that something stood there without learning what, and a served answer says what was removed.
`redact_pii` also counts what it replaced per kind (the data stage's counts). `release_point`
serves streaming: how much of a text can be redacted and sent now, before where a match could still
grow.

Kinds run in this order, so a more specific pattern claims its text first (a PEM block holds base64
that could look like anything; an email's digits must not become a phone):

- secret: PEM private-key blocks, AWS access key ids (AKIA...), GitHub tokens (ghp_..., github_pat_...),
  Slack tokens (xoxb-...), OpenAI-style keys (sk-... with a digit), Stripe keys (sk_live_...), Google API
  keys (AIza...), Bearer tokens, and the value of an assignment to a secret-sounding name
  (`api_key = "..."`, `DB_PASSWORD: ...`). An assigned value must be quoted and 8+ characters, or
  unquoted, 12+ characters and mixed letters and digits, so `password = getpass.getpass()` and
  `api_key = settings.API_KEY` stay; template placeholders (`"<your key>"`, `"${KEY}"`) stay too.
- email: local@domain.tld with a dot and a 2+ letter TLD, so `a@decorator`, `x@y` and `pkg@1.2.3` stay.
- card: 13-19 digits, optionally in groups of 3-6 split by one kind of space or dash, that pass the Luhn
  check and start with 2-6 (the ranges of the card networks). A Luhn-failing run, a 19-digit epoch
  timestamp (starts with 1) and `x = 1234567890123` stay.
- ip: IPv4 with every octet <= 255 and no leading zeros, not part of a longer dotted run (so `1.2.3.4.5`
  and `3.11.2` stay); IPv6 validated by `ipaddress`, with at least three groups (`a[1::2]` is a slice).
  By default only public addresses go: loopback, private, link-local, documentation and unspecified
  addresses identify nobody and fill code examples (127.0.0.1, 192.168.0.1), as in datatrove.
- phone: North-American numbers with separators (`(415) 555-0132`, `415-555-0132`, `+1 415.555.0132`;
  area code 2-9) and international numbers with a leading + and 8-15 digits (10-15 when written without
  separators): `+44 20 7946 0958`, `+33 1 23 45 67 89`, `+14155550132`. Bare digit runs, dates
  (2024-01-15), times, prices and versions are not phones. National formats without + (`020 7946 0958`)
  are out of reach without a country: they are left alone.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import Literal, get_args

from raygen.errors import ConfigError

Kind = Literal["secret", "email", "card", "ip", "phone"]
KINDS: tuple[str, ...] = get_args(Kind)  # application order
PLACEHOLDERS = {"secret": "<SECRET>", "email": "<EMAIL>", "card": "<CARD>", "ip": "<IP>", "phone": "<PHONE>"}

# ------------------------------------------------------------------------------------------- secrets

# (pattern, substrings one of which every match contains): the substring test skips most documents.
_SECRET_PATTERNS = [(re.compile(p), triggers) for p, triggers in (
    # PEM private keys of any algorithm; a block cut off by truncation is redacted to the end.
    (r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?"
     r"(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)", ("PRIVATE KEY",)),
    (r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b", ("AKIA", "ASIA", "ABIA", "ACCA")),  # AWS access key id
    (r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b",  # GitHub tokens
     ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_")),
    (r"\bxox[bpars]-[A-Za-z0-9-]{10,250}", ("xox",)),  # Slack tokens
    (r"(?<![\w-])sk-(?=[A-Za-z_-]*\d)[A-Za-z0-9_-]{20,250}", ("sk-",)),  # OpenAI-style: needs a digit
    (r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,250}\b", ("k_live_", "k_test_")),  # Stripe keys
    (r"\bAIza[0-9A-Za-z_-]{35}(?![\w-])", ("AIza",)),  # Google API key
    # HTTP bearer token (JWTs included); the word "Bearer" stays.
    (r"(?i)(?<=bearer )(?=[A-Za-z._~+/-]*\d)[A-Za-z0-9._~+/-]{20,}=*", ("earer ",)),
)]
# name = value, name: value, "name": "value", where the name is, or ends after "_" or "-" in, a
# secret-sounding word (DB_PASSWORD, x-api-key; not camelCase). Only the value is replaced.
_ASSIGNED = re.compile(
    r"(?i)(?P<head>(?<![^\W_])(?=[aspcrb])(?:api[_-]?key|(?:secret|access|private)[_-]?key"
    r"|client[_-]?secret|secret|(?:access|auth|refresh|api|bearer)[_-]?token|passw(?:or)?d)[\"']?\s*[:=]\s*)"
    r"(?:(?P<q>[\"'])(?P<quoted>[^\"'\n]{8,200})(?P=q)|(?P<bare>[A-Za-z0-9_+/=-]{12,200})(?![\w+/=.@-]))")
_PLACEHOLDER_CHARS = re.compile(r"[<>{}$%]")  # "<your-key>", "${API_KEY}", "%(password)s", "{token}"
_DIGIT = re.compile(r"\d")
_LETTER = re.compile(r"[A-Za-z]")


def _assigned_secret(m: re.Match[str]) -> str | None:
    if m["q"]:
        if _PLACEHOLDER_CHARS.search(m["quoted"]):
            return None
        return f"{m['head']}{m['q']}{PLACEHOLDERS['secret']}{m['q']}"
    if not (_DIGIT.search(m["bare"]) and _LETTER.search(m["bare"])):  # an identifier, not a random key
        return None
    return m["head"] + PLACEHOLDERS["secret"]


# One search each says whether any secret pattern, or an assignment to a secret-sounding name, can match:
# most text (and most streamed chunks) has neither.
_ANY_TRIGGER = re.compile("|".join(re.escape(t) for _, triggers in _SECRET_PATTERNS for t in triggers))
_ASSIGNED_HINT = re.compile(r"(?i)key|secret|token|passw")


def _redact_secrets(text: str, public_ips_only: bool) -> tuple[str, int]:
    total = 0
    if _ANY_TRIGGER.search(text):
        for pattern, triggers in _SECRET_PATTERNS:
            if any(t in text for t in triggers):
                text, n = pattern.subn(PLACEHOLDERS["secret"], text)
                total += n
    if _ASSIGNED_HINT.search(text):
        text, n = _sub_valid(_ASSIGNED, text, _assigned_secret)
        total += n
    return text, total


# --------------------------------------------------------------------------------------------- email

# The lookbehind starts a match only at the start of a run of local-part characters: linear time.
_EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}(?![\w-])")


def _redact_emails(text: str, public_ips_only: bool) -> tuple[str, int]:
    return _EMAIL.subn(PLACEHOLDERS["email"], text) if "@" in text else (text, 0)


# --------------------------------------------------------------------------------------------- cards

_CARD = re.compile(r"(?<![\w.-])\d(?:[ -]?\d){12,18}(?![\w-]|\.\d)")
_CARD_SEPARATORS = re.compile(r"[ -]")


def luhn_ok(digits: str) -> bool:
    """The Luhn mod-10 check every payment card number carries in its last digit."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(m: re.Match[str]) -> str | None:
    s = m[0]
    groups = _CARD_SEPARATORS.split(s)
    if len(groups) > 1 and (len(set(_CARD_SEPARATORS.findall(s))) > 1 or not all(3 <= len(g) <= 6 for g in groups)):
        return None  # "4111 1111-1111 1111" or "4 1 1 1 ..." is not how a card is written
    digits = "".join(groups)
    return PLACEHOLDERS["card"] if digits[0] in "23456" and luhn_ok(digits) else None


def _redact_cards(text: str, public_ips_only: bool) -> tuple[str, int]:
    return _sub_valid(_CARD, text, _card)


# ------------------------------------------------------------------------------------------------ IP

_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
# Candidates: hex groups and colons (at least two colons), optionally ending in a dotted quad; the
# ipaddress module decides. A trailing ':' (end of a clause) is handled in _ipv6.
_IPV6 = re.compile(
    r"(?<![\w:.])(?=[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:)[0-9A-Fa-f:]{2,39}"
    r"(?:(?<=:)(?:\d{1,3}\.){3}\d{1,3})?(?![\w:]|\.\w)")


def _keep_address(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, public_ips_only: bool) -> bool:
    return public_ips_only and not addr.is_global


def _ipv4(m: re.Match[str], public_ips_only: bool) -> str | None:
    octets = m[0].split(".")
    if any((len(o) > 1 and o[0] == "0") or int(o) > 255 for o in octets):  # "01.02.03.04" is a date
        return None
    return None if _keep_address(ipaddress.IPv4Address(m[0]), public_ips_only) else PLACEHOLDERS["ip"]


def _ipv6(m: re.Match[str], public_ips_only: bool) -> str | None:
    s, tail = m[0], ""
    if s.endswith(":") and not s.endswith("::"):
        s, tail = s[:-1], ":"
    if sum(2 if "." in g else 1 for g in s.split(":") if g) < 3:  # a dotted quad is two groups
        return None  # "::1", "1::2", "a::b": slices and C++ scopes far more often than addresses
    try:
        addr = ipaddress.IPv6Address(s)
    except ValueError:
        return None  # "12:30:45", MAC addresses, "::=" grammar
    return None if _keep_address(addr, public_ips_only) else PLACEHOLDERS["ip"] + tail


def _redact_ips(text: str, public_ips_only: bool) -> tuple[str, int]:
    n4 = n6 = 0
    if "::" in text or text.count(":") >= 7:  # compressed, or all eight groups; first: ::ffff:8.8.8.8
        text, n6 = _sub_valid(_IPV6, text, lambda m: _ipv6(m, public_ips_only))
    if "." in text:
        text, n4 = _sub_valid(_IPV4, text, lambda m: _ipv4(m, public_ips_only))
    return text, n4 + n6


# --------------------------------------------------------------------------------------------- phone

# +country code, an optional "(0)"/"(555)" group, then digit groups split by one space or dash.
_PHONE_INTL = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ -]?\(\d{1,4}\))?[ -]?\d+(?:[ -]\d+){0,5}(?![\w-]|\.\d)")
_PHONE_NANP = re.compile(
    r"(?<![\w+.-])(?:\+?1[ .-]?)?(?:\([2-9]\d{2}\)[ .-]?|[2-9]\d{2}[ .-])\d{3}[ .-]\d{4}(?![\w-]|\.\d)")
_NON_DIGIT = re.compile(r"\D")


def _phone_intl(m: re.Match[str]) -> str | None:
    digits = _NON_DIGIT.sub("", m[0])
    low = 10 if len(digits) == len(m[0]) - 1 else 8  # "+" and digits only: no separators
    return PLACEHOLDERS["phone"] if low <= len(digits) <= 15 else None


def _redact_phones(text: str, public_ips_only: bool) -> tuple[str, int]:
    text, n = _sub_valid(_PHONE_INTL, text, _phone_intl) if "+" in text else (text, 0)
    text, m = _PHONE_NANP.subn(PLACEHOLDERS["phone"], text)
    return text, n + m


# ------------------------------------------------------------------------------------------- driver


def _sub_valid(pattern: re.Pattern[str], text: str,
               replace: Callable[[re.Match[str]], str | None]) -> tuple[str, int]:
    """pattern.subn where replace may veto a match (returns None) after validating it."""
    n = 0

    def repl(m: re.Match[str]) -> str:
        nonlocal n
        out = replace(m)
        if out is None:
            return m[0]
        n += 1
        return out

    return pattern.sub(repl, text), n


_REDACTORS = {"secret": _redact_secrets, "email": _redact_emails, "card": _redact_cards, "ip": _redact_ips,
              "phone": _redact_phones}


def redact_pii(text: str, kinds: Iterable[str] | None = None, *,
               public_ips_only: bool = True) -> tuple[str, dict[str, int]]:
    """(text with each match replaced by its kind's placeholder, {kind: replacements}) for the given
    kinds (default: all of KINDS; every requested kind gets a count, 0 included)."""
    wanted = set(KINDS if kinds is None else kinds)
    if unknown := wanted - set(KINDS):
        raise ConfigError(f"unknown PII kinds {sorted(unknown)}; choose from {list(KINDS)}")
    counts = {}
    for kind in KINDS:
        if kind in wanted:
            text, counts[kind] = _REDACTORS[kind](text, public_ips_only)
    return text, counts


# ----------------------------------------------------------------------------------------- streaming

# Every email, card, IP, phone and token-like secret lies within one run of one of these character
# classes, so a match still growing lies in the text's last run of its class.
_CLASSES = (r"[\w.%+@:/=~-]", r"[\d +().-]")
_CHAR = tuple(re.compile(c) for c in _CLASSES)
_RUN = tuple(re.compile(c + "*") for c in _CLASSES)  # matched on the reversed text: linear, no backtracking
# Secrets that span other characters: an assignment whose value has not ended (or whose `=` has not come
# yet), a bearer token (its pattern looks back at "Bearer "), a PEM header still arriving, and a PEM
# block without its END line.
_OPEN_SECRET = re.compile(
    r"(?i)(?:(?<![\w-])[\w-]*(?:key|secret|token|passw(?:or)?d)[\"']?\s*(?:[:=]\s*(?:[\"'][^\"'\n]*|[\w+/=-]*))?"
    r"|bearer ?[\w.~+/=-]*|-----BEGIN[A-Z0-9 ]*)\Z")
_OPEN_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?:(?!-----END)[\s\S])*\Z")
MAX_HOLD = 256  # a run longer than this (no email, number or key is) is released anyway
MAX_PEM_HOLD = 8192  # an open PEM block is held this far (a 4096-bit RSA key is ~3,300 characters)


def release_point(text: str, limit: int | None = None, kinds: Iterable[str] | None = None) -> int:
    """The largest i <= limit (default: the end) such that redacting text[:i] now and the rest later,
    whatever follows, gives what redacting the whole stream at once would: before where a match could
    still grow, and where no complete match spans it."""
    kinds = tuple(KINDS if kinds is None else kinds)
    floor = max(0, len(text) - MAX_HOLD)
    tail = text[:floor - 1 if floor else None:-1]  # the last MAX_HOLD characters, reversed
    start = max(len(text) - max(r.match(tail).end() for r in _RUN), floor)
    if "secret" in kinds:
        if m := _OPEN_SECRET.search(text, floor):
            start = min(start, m.start())
        if "-----BEGIN" in text and (m := _OPEN_PEM.search(text, max(0, len(text) - MAX_PEM_HOLD))):
            start = min(start, m.start())
    start = start if limit is None else min(start, limit)
    return _consistent_cut(text, start, min(floor, start), kinds)


def _consistent_cut(text: str, cut: int, floor: int, kinds: tuple[str, ...]) -> int:
    """cut, or the nearest point before it, that splits no run of one class (the held piece could match
    later on its own where the whole would not) and no complete match (redacting the two sides apart
    gives the same text as redacting them together)."""
    whole = redact_pii(text, kinds)[0]
    for c in range(cut, floor, -1):
        if c < len(text) and any(ch.match(text, c) and ch.match(text, c - 1) for ch in _CHAR):
            continue
        if whole == text or redact_pii(text[:c], kinds)[0] + redact_pii(text[c:], kinds)[0] == whole:
            return c
    return floor
