"""raygen.pii: one redactor for training data and for served answers (the same kinds and placeholders).
Whole documents, near misses, and the same cases streamed through the serving guard in any chunking."""

import pytest

from raygen.pii import KINDS, luhn_ok, redact_pii
from raygen.serve.safety import SafetyFilter


CASES = [
    ("mail jane.doe+news@example.co.uk today", "email", "mail <EMAIL> today"),
    ("<bob_99@mail.example.com>.", "email", "<<EMAIL>>."),
    ("call (415) 555-0132 now", "phone", "call <PHONE> now"),
    ("call 415-555-0132.", "phone", "call <PHONE>."),
    ("call 415.555.0132", "phone", "call <PHONE>"),
    ("call +1 415 555 0132", "phone", "call <PHONE>"),
    ("call 1-800-555-0199", "phone", "call <PHONE>"),
    ("tel:+44 20 7946 0958", "phone", "tel:<PHONE>"),
    ("tel +44 (0)20 7946 0958", "phone", "tel <PHONE>"),
    ("tel +33 1 23 45 67 89", "phone", "tel <PHONE>"),
    ("tel +81-3-1234-5678", "phone", "tel <PHONE>"),
    ("tel +14155550132", "phone", "tel <PHONE>"),
    ("ip 93.184.216.34, port 80", "ip", "ip <IP>, port 80"),
    ("dns 8.8.8.8:53", "ip", "dns <IP>:53"),
    ("v6 2606:4700:4700::1111 ok", "ip", "v6 <IP> ok"),
    ("at [2a00:1450:4001:80b::200e]:443", "ip", "at [<IP>]:443"),
    ("mapped ::ffff:8.8.8.8", "ip", "mapped <IP>"),
    ("from 2606:4700:4700::1111: refused", "ip", "from <IP>: refused"),
    ("card 4111 1111 1111 1111 exp", "card", "card <CARD> exp"),
    ("card 4111-1111-1111-1111", "card", "card <CARD>"),
    ("card 5555555555554444.", "card", "card <CARD>."),
    ("amex 3782 822463 10005", "card", "amex <CARD>"),
    ("key AKIAIOSFODNN7EXAMPLE", "secret", "key <SECRET>"),
    ("ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", "secret", "<SECRET>"),
    ("xoxb-1234567890-abcdefghij", "secret", "<SECRET>"),
    ("OPENAI=sk-proj-abc123DEF456ghi789JKL012", "secret", "OPENAI=<SECRET>"),
    ("AIzaSyA1234567890abcdefghijklmnopqrstuv", "secret", "<SECRET>"),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abc", "secret",
     "Authorization: Bearer <SECRET>"),
    ('api_key = "abcd1234efgh5678"', "secret", 'api_key = "<SECRET>"'),
    ('{"client_secret": "zzzzzzzzzzzz"}', "secret", '{"client_secret": "<SECRET>"}'),
    ("DB_PASSWORD=s3cr3tP4ssw0rd", "secret", "DB_PASSWORD=<SECRET>"),
    ("password: hunter2hunter2", "secret", "password: <SECRET>"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\nafter", "secret",
     "<SECRET>\nafter"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAA", "secret", "<SECRET>"),
]


@pytest.mark.parametrize("text,kind,expected", CASES)
def test_pii_redacted(text, kind, expected):
    out, counts = redact_pii(text)
    assert out == expected
    assert counts[kind] >= 1 and sum(counts.values()) == counts[kind]


NEAR_MISSES = [
    "Python 3.11.2 was released; see 1.2.3.4.5 and 4.0.30319.42000",
    "on 2024-01-15 at 12:30:45, or 15/01/2024 and 01.02.03.04",
    "costs $1,234.56, €99.99 or 1 234 567",
    "a@decorator, x@y, user@localhost, pkg@1.2.3, @property",
    "x = 1234567890123 and y = 4111111111111112",  # Luhn fails
    "ts = 1700000000000000000",  # 19 digits that pass no card prefix
    "short 12345, 555-1234, ext 42",
    "999.999.999.999 and 256.1.1.1",
    "private 192.168.0.1, 10.0.0.1, 127.0.0.1, ::1, fe80::1, 2001:db8::1",
    "a[1::2], b[::3], std::vector, 00:1a:2b:3c:4d:5e, expr ::= a | b",
    "ISBN 978-3-16-148410-0, +3.14159265358",
    "password = getpass.getpass(); api_key = settings.API_KEY",
    'password = "<your password>"; token = "${TOKEN}"',
    "sk-learn-is-a-library and the bearer of bad news",
    "order ab4111 1111 1111 1111 and x415-555-0132",  # glued to a word: not a card or a phone
]


@pytest.mark.parametrize("text", NEAR_MISSES)
def test_pii_near_misses_kept(text):
    out, counts = redact_pii(text)
    assert out == text and not any(counts.values())


@pytest.mark.parametrize("number,ok", [
    ("79927398713", True), ("4111111111111111", True), ("378282246310005", True),
    ("6011111111111117", True), ("4111111111111112", False), ("1234567890123", False),
])
def test_luhn(number, ok):
    assert luhn_ok(number) is ok


def test_redact_pii_kinds_and_counts():
    text = "jo@example.com, jo2@example.com, 93.184.216.34 and 192.168.1.1"
    out, counts = redact_pii(text)
    assert counts == {"secret": 0, "email": 2, "card": 0, "ip": 1, "phone": 0}
    assert list(counts) == list(KINDS)
    out, counts = redact_pii(text, ["ip"], public_ips_only=False)
    assert counts == {"ip": 2} and out == "jo@example.com, jo2@example.com, <IP> and <IP>"
    with pytest.raises(ValueError, match="unknown PII kinds"):
        redact_pii(text, ["ssn"])


def test_pii_regexes_stay_linear_on_long_runs():
    # Long runs of the characters the patterns are made of must not backtrack quadratically.
    for blob in ("a" * 200_000, "1" * 200_000, "a." * 100_000, "1:" * 100_000, "+1 " * 50_000):
        assert redact_pii(blob)[0] == blob


def _streamed(text: str, size: int, **kw) -> str:
    g = SafetyFilter(**kw).guard()
    out = [g.feed(text[i:i + size]) for i in range(0, len(text), size)]
    return "".join(out) + g.flush()


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_streamed_output_is_redacted_exactly_as_the_whole_text(size):
    """Every case above, fed to the serving guard in chunks of `size` characters inside prose."""
    for text in [c[0] for c in CASES] + NEAR_MISSES:
        doc = f"Here it is: {text} and the rest of the answer."
        assert _streamed(doc, size) == redact_pii(doc)[0], (size, doc)


def test_streaming_holds_back_only_what_a_match_could_grow_from():
    g = SafetyFilter().guard()
    words = "the return statement leaves a function with a value".split(" ")
    sent = "".join(g.feed((" " if i else "") + w) for i, w in enumerate(words))
    assert sent == "the return statement leaves a function with a "  # only "value" is still held
    assert g.flush() == "value"
    g = SafetyFilter().guard()
    assert g.feed("call 415 555") == "call" and g.feed(" 0123 now") == " <PHONE> " and g.flush() == "now"
    g = SafetyFilter().guard()  # an assignment is held from its name until its value ends
    assert g.feed("set api_key") == "set " and g.feed(' = "abcd12') == "" and g.feed('34efgh5678" ok') == \
        'api_key = "<SECRET>" '
    g = SafetyFilter().guard()  # a PEM block is held until its END line
    assert g.feed("key: -----BEGIN RSA PRIVATE KEY-----\nMIIE") == "key:" and g.feed("pAIBAAKCAQEA\n") == ""
    assert g.feed("-----END RSA PRIVATE KEY-----\nafter that") == " <SECRET>\nafter " and g.flush() == "that"


def test_serving_redacts_only_the_configured_kinds():
    doc = "mail jo@example.com from 93.184.216.34"
    assert _streamed(doc, 4, pii_kinds=("email",)) == "mail <EMAIL> from 93.184.216.34"
    assert _streamed(doc, 4, redact_pii=False) == doc
