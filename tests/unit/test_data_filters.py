"""Quality and PII stages on crafted documents and on the built-in corpus. Pure Python, no Ray."""

from dataclasses import fields, replace

import pytest
from pydoc_data.topics import topics

from raygen.data import quality as q
from raygen.pii import redact_pii
from raygen.data.clean import clean_text

GOOD = """\
The river town wakes early in spring, when fishermen push their boats into the cold water and the bakery on \
the corner fills the street with the smell of fresh bread. Children walk to school along the stone bridge, \
and older neighbors gather with coffee to argue about the weather, the price of grain, and which family \
will have the finest garden this year.

By noon the market is crowded. Farmers arrive from the hills with baskets of apples, cheese wrapped in \
cloth, and honey that tastes of wild thyme. A musician plays an old accordion near the fountain while \
tourists take photographs of the painted houses that line the square.

In the evening the light turns golden over the valley. Lamps appear one by one in the windows, dogs bark \
at passing bicycles, and the last ferry crosses to the far shore carrying tired workers home to supper."""
SENTENCES = [s.rstrip(".") for s in GOOD.replace("\n\n", " ").split(". ")]
WORDS = GOOD.split()
PHRASE = "just as the old song about the river, the hills and the wide sea always says"


def as_lines(end: str = ".", prefix: str = "") -> str:
    return "\n".join(prefix + s + end for s in SENTENCES)


# One document per rule, each failing that rule and no rule before it in RULE_ORDER.
TRIPS = {
    q.R_MEAN_WORD_LENGTH: GOOD + "\n\n" + " ".join(f"extraordinarilylongword{i}" for i in range(150)),
    q.R_SYMBOL_RATIO: GOOD + "\n\n" + " ".join(f"#tag{i}" for i in range(30)),
    q.R_BULLET_LINES: as_lines(prefix="- "),
    q.R_ELLIPSIS_LINES: as_lines(end="..."),
    q.R_STOP_WORDS: " ".join(w for w in WORDS if w.lower() not in q.STOP_WORDS),
    q.R_ALPHA_WORDS: GOOD + "\n\n" + " ".join(str(1000 + 7 * i) for i in range(300)),
    q.R_DUP_LINES: as_lines() + "\nShare this story." * 8,
    q.R_DUP_PARAGRAPHS: GOOD.replace(". ", ".\n") + "\n\nThanks for reading." * 4,
    q.R_TOP_NGRAM: " ".join(w + (" extraordinary circumstances" if i % 15 == 7 else "") for i, w in enumerate(WORDS)),
    q.R_DUP_NGRAM: "\n".join(s + (", " + PHRASE if i % 3 == 0 else "") + "." for i, s in enumerate(SENTENCES)),
}
RULE_FIELDS = {  # reason -> the QualityRules fields that switch it off
    q.R_WORD_COUNT: {"min_words": None, "max_words": None},
    q.R_MEAN_WORD_LENGTH: {"min_mean_word_length": None, "max_mean_word_length": None},
    q.R_SYMBOL_RATIO: {"max_symbol_word_ratio": None},
    q.R_BULLET_LINES: {"max_bullet_lines": None},
    q.R_ELLIPSIS_LINES: {"max_ellipsis_lines": None},
    q.R_STOP_WORDS: {"min_stop_words": None},
    q.R_ALPHA_WORDS: {"min_alpha_words": None},
    q.R_DUP_LINES: {"max_dup_lines": None, "max_dup_line_chars": None},
    q.R_DUP_PARAGRAPHS: {"max_dup_paragraphs": None, "max_dup_paragraph_chars": None},
    q.R_TOP_NGRAM: {"max_top_ngram_chars": ()},
    q.R_DUP_NGRAM: {"max_dup_ngram_chars": ()},
}
ALL_OFF = q.QualityRules(**{k: v for off in RULE_FIELDS.values() for k, v in off.items()})


def test_good_document_passes_and_scores_high():
    assert q.quality_reason(GOOD) == q.quality_reason(GOOD, q.GOPHER_RULES) == ""
    assert q.quality_score(GOOD) > 0.85


@pytest.mark.parametrize("reason", list(TRIPS))
def test_each_rule_trips_alone_and_switches_off(reason):
    doc = TRIPS[reason]
    assert q.quality_reason(doc) == reason
    assert q.quality_reason(doc, q.GOPHER_RULES) == reason
    # Only this rule fails: with it off the document passes (repetition rules overlap, so for them only
    # the next rule in line may still object).
    later = set(q.RULE_ORDER[q.RULE_ORDER.index(reason) + 1:])
    off = q.quality_reason(doc, replace(q.DEFAULT_RULES, **RULE_FIELDS[reason]))
    assert off == "" or (reason in (q.R_DUP_LINES, q.R_DUP_PARAGRAPHS) and off in later)


def test_word_count_bounds():
    assert q.quality_reason("The cat sat with the dog.") == q.R_WORD_COUNT
    assert q.quality_reason(GOOD, replace(q.DEFAULT_RULES, max_words=100)) == q.R_WORD_COUNT
    assert q.quality_reason("") == q.R_WORD_COUNT


def test_rule_fields_cover_every_reason_and_field():
    assert set(RULE_FIELDS) == set(q.RULE_ORDER)
    switched = {k for off in RULE_FIELDS.values() for k in off}
    assert switched == {f.name for f in fields(q.QualityRules)}
    for doc in [*TRIPS.values(), "", "x", "# # # ... ...\n" * 50]:
        assert q.quality_reason(doc, ALL_OFF) == ""


def test_dup_ngram_fraction_counts_repeats_once():
    words = "a b c d e a b c d e".split()
    prefix = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert q.dup_ngram_fraction(words, 5, prefix) == 0.5  # the second copy only
    assert q.dup_ngram_fraction("a a a a a a".split(), 2, prefix[:7]) == pytest.approx(5 / 6)  # all but the 1st
    assert q.dup_ngram_fraction("a b c".split(), 5, prefix[:4]) == 0.0
    assert q.top_ngram_fraction("x y x y z".split(), 2, 5) == pytest.approx(4 / 5)


def test_quality_score_range_and_order():
    junk = " ".join(["buy now", "cheap", "1234", "$$$"] * 40)
    scores = [q.quality_score(d) for d in ["", "x", junk, GOOD]]
    assert scores[0] == 0.0 and all(0.0 <= s <= 1.0 for s in scores)
    assert q.quality_score(junk) < 0.6 < q.quality_score(GOOD)


PYDOC = {name: clean_text(text) for name, text in topics.items()}


def test_pydoc_topics_survive_the_defaults():
    long_docs = {k: t for k, t in PYDOC.items() if len(t.split()) >= 50}
    kept = [k for k, t in long_docs.items() if q.quality_reason(t) == ""]
    assert len(kept) >= 0.9 * len(long_docs)
    for name in ("lambda", "for", "typesseq", "operator-summary", "formatstrings"):
        text, removed = q.remove_boilerplate_lines(PYDOC[name])
        assert (text, removed) == (PYDOC[name], 0)
        assert q.quality_reason(text) == "", name
        assert redact_pii(text)[0] == text


def test_boilerplate_never_touches_pydoc():
    assert sum(q.remove_boilerplate_lines(t)[1] for t in PYDOC.values()) == 0


# ---------------------------------------------------------------------------------------------- HTML

PAGE = """<!DOCTYPE html><html><head><title>Site</title><style>p { color: red }</style>
<script>var s = "<p>not text</p>";</script></head>
<body><header><a href="/">Home</a></header><nav><ul><li>Home</li><li>About</li></ul></nav>
<h1>Main &amp; title</h1><p>First   paragraph with&nbsp;entities &lt;ok&gt; and <b>bold</b> text.<br>Next line.</p>
<div>Block one</div><div>Block two</div>
<pre>def f():
    return 1</pre>
<table><tr><td>a</td><td>b</td></tr><tr><td>c</td><td>d</td></tr></table>
<aside>Ads</aside><form><input name="q"><button>Go</button></form><noscript>Enable JS</noscript>
<footer>(c) 2024</footer><p>Unclosed <i>italic
<div>after</div></body></html>"""


def test_html_to_text_keeps_content_only():
    assert q.html_to_text(PAGE) == (
        "Main & title\n\nFirst paragraph with entities <ok> and bold text.\nNext line.\n\n"
        "Block one\nBlock two\n\ndef f():\n    return 1\n\na b\nc d\n\nUnclosed italic\nafter")


@pytest.mark.parametrize("html", [
    "", "plain text", "<p>unterminated <b", "<![if foo", "<script>never closed", "</div></p><<<>>>",
    "&#xZZ;&bogus;&#99999999999;", "<nav>never closed <p>gone</p>", "<!-- unterminated comment",
    "<a href='x>broken</a>", "<\x00p>\x00", "<![CDATA[x]]>y", "<svg><p>drawn</svg>text",
])
def test_html_to_text_never_raises(html):
    assert isinstance(q.html_to_text(html), str)


def test_html_head_without_end_tag_is_closed_by_body():
    assert q.html_to_text("<head><title>t</title><body><p>body text") == "body text"
    assert q.html_to_text("<nav><nav>x</nav>still nav</nav>shown") == "shown"


# ------------------------------------------------------------------------------------------ boilerplate

@pytest.mark.parametrize("line", [
    "We use cookies to improve your experience.",
    "© 2024 Example Inc. All rights reserved.",
    "Privacy Policy",
    "Please enable JavaScript to view the comments.",
    "Lorem ipsum dolor sit amet.",
    "Skip to main content",
    "Home | About | Contact | Blog",
    "Docs » Library » Text Processing",
    "Read more",
    "Back to top",
])
def test_boilerplate_lines_removed(line):
    text, removed = q.remove_boilerplate_lines(f"Intro line.\n{line}\nOutro line.")
    assert (text, removed) == ("Intro line.\nOutro line.", 1)


@pytest.mark.parametrize("line", [
    "    x = a | b | c",  # indented: code
    "    # see our privacy policy",  # indented: code comment
    "| Name | Value | Notes |",  # table row
    "Operators: a | b | (c)",
    "This long paragraph discusses how the new privacy policy of the company changed what it collects, "
    "which regulators criticised for months in a series of public letters and hearings this year.",
    "def f(x): return {x: 1}",  # curly brackets are kept unless asked
    "Next, we define the function.",
])
def test_content_lines_kept(line):
    assert q.remove_boilerplate_lines(line) == (line, 0)


def test_boilerplate_options():
    text = "Keep me.\nconfig = {a: 1}\nTerms of Use"
    assert q.remove_boilerplate_lines(text, drop_curly=True) == ("Keep me.", 2)
    assert q.remove_boilerplate_lines(text, phrases=()) == (text, 0)
    assert q.remove_boilerplate_lines("Home | About | Contact", drop_nav=False)[1] == 0
    assert q.remove_boilerplate_lines("A.\nTerms of Use\n\n\nB.")[0] == "A.\n\nB."


def test_quality_regexes_stay_linear_on_long_runs():
    blob = "1a" * 200_000
    assert 0.0 <= q.quality_score(blob) <= 1.0
    assert q.quality_reason(blob, replace(ALL_OFF, min_alpha_words=0.5)) == ""
    assert q.html_to_text("<" * 100_000 + "a") is not None
