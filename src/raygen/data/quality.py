"""Pure quality stages: HTML to text, boilerplate lines, Gopher-style quality rules and a quality score.

No Ray and no torch in here: each function takes one document's text, so the pipeline can map them over
batches and count what each stage did. In pipeline order:

1. `html_to_text` — markup to plain text with the stdlib parser. Content a reader never reads as the
   page (script, style, nav, header, footer, aside, form, noscript, ...) is dropped with its text,
   block elements become line breaks, entities are unescaped. It never raises: a crawl holds broken HTML.
2. `remove_boilerplate_lines` — line-level cleanup in the spirit of C4 and datatrove: cookie, policy
   and "enable JavaScript" notices, "lorem ipsum" filler and navigation lists. Unlike C4 it removes the
   line, not the page, and it never touches indented lines (code, quotes, tables), so documentation with
   code examples survives. C4's terminal-punctuation and three-word rules are left out on purpose: they
   delete every line of code.
3. `quality_reason` — the document-level filters of Gopher (Rae et al. 2021, appendix A), one reason
   per dropped document. The rules run in a fixed order, cheapest first, and the first one that fails
   names the reason; `RULE_ORDER` lists them.
4. `quality_score` — a number in [0, 1] kept as a label for a later learned filter, not a filter itself.

Thresholds. `GOPHER_RULES` holds the paper's values, meant for web crawls. The defaults
(`DEFAULT_RULES`) differ in two places only, because the built-in corpus, CPython's documentation, is
not web prose: its reST tables are made of letter-free words ('|', '+------+', numbers) and repeat their
rulers on every row. Measured on the 74 pydoc topics of 50+ words, the lowest alphabetic-word fraction
is 0.70 (Gopher asks 0.8) and the highest duplicate-line character fraction 0.22 (Gopher allows 0.2), so
the defaults are 0.65 and 0.25. With them 70 of those 74 topics pass; the other four repeat whole
sentences ("which must be integers or one of them must be a custom object overriding ...") and fail
the duplicate n-gram rule just as they would under Gopher. Everything else is Gopher's value; tighten
back with `GOPHER_RULES` for crawls. The n-gram rules skip punctuation-only words for the same reason:
table layout is not repeated content.

Cost: every rule is linear in the document. Words are split once, n-gram statistics come from one
Counter per n (tuples of words hash at C speed), and the duplicate 5..10-gram rules stop as soon as the
fraction for some n is below the thresholds of all larger n: a duplicated (n+1)-gram consists of
duplicated n-grams, so the duplicated-character fraction can only shrink as n grows.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from html.parser import HTMLParser
from itertools import accumulate, compress, filterfalse, repeat
from operator import ne

# ---------------------------------------------------------------------------------------------- HTML

# Elements whose text is not the page's content. "head" is closed by <body> when a page forgets </head>.
SKIP_TAGS = frozenset({
    "script", "style", "noscript", "template", "nav", "header", "footer", "aside", "form", "head",
    "iframe", "svg", "canvas", "object", "select", "button",
})
# Blocks that separate paragraphs (blank line) and those that only break a line.
_PARAGRAPH_TAGS = frozenset({
    "p", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "ul", "ol", "dl", "table", "section",
    "article", "main", "figure", "hr", "address", "details", "body",
})
_LINE_TAGS = frozenset({"br", "li", "div", "tr", "dt", "dd", "figcaption", "caption", "summary", "title"})
_CELL_TAGS = frozenset({"td", "th"})
_WS = re.compile(r"\s+")
_BLANK_RUNS = re.compile(r"\n{3,}")


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # entities arrive unescaped in handle_data
        self.parts: list[str] = []
        self.skip: list[str] = []  # open skipped elements, innermost last; their text is dropped
        self.pre = 0  # depth of open <pre>: whitespace there is content
        self.newlines = 2  # newlines the output ends with (start of text counts as a paragraph break)

    def _emit(self, s: str) -> None:
        self.parts.append(s)
        stripped = s.rstrip("\n")
        self.newlines = len(s) - len(stripped) + (self.newlines if not stripped else 0)

    def _block(self, tag: str) -> None:
        # A block boundary ensures a line (or paragraph) break; adjacent boundaries do not stack up.
        want = 2 if tag in _PARAGRAPH_TAGS else 1 if tag in _LINE_TAGS else 0
        if want > self.newlines:
            self._emit("\n" * (want - self.newlines))

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "body" and "head" in self.skip:
            del self.skip[self.skip.index("head"):]
        if tag in SKIP_TAGS:
            self.skip.append(tag)  # also while skipping, so nested ones close in the right place
        elif self.skip:
            pass
        elif tag == "br":
            self._emit("\n")  # <br><br> is a blank line on purpose
        elif tag in _CELL_TAGS:
            if not self.newlines:
                self._emit(" ")
        else:
            self.pre += tag == "pre"
            self._block(tag)

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        if tag not in SKIP_TAGS:  # <br/>; a self-closed <nav/> opens nothing
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in SKIP_TAGS:
            if tag in self.skip:  # pop to the matching open element; a stray end tag is ignored
                del self.skip[len(self.skip) - 1 - self.skip[::-1].index(tag):]
        elif not self.skip:
            if tag == "pre" and self.pre:
                self.pre -= 1
            self._block(tag)

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if not self.pre:
            data = _WS.sub(" ", data)
            if self.newlines:
                data = data.lstrip()
        if data:
            self._emit(data)


def html_to_text(html: str) -> str:
    """Plain text of an HTML page: non-content elements dropped, blocks as line breaks, entities
    unescaped, whitespace collapsed outside <pre>. Never raises; broken markup yields what was parsed."""
    parser = _TextExtractor()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # the stdlib parser is lenient, but a crawl finds every corner; keep what we have
        pass
    text = "\n".join(line.rstrip() for line in "".join(parser.parts).split("\n"))
    return _BLANK_RUNS.sub("\n\n", text).strip("\n")


# ------------------------------------------------------------------------------------------ boilerplate

# Lower-case phrases whose line is a site notice, not content (C4's policy list, widened a little).
# A phrase only condemns a short line (max_words): an article that discusses a privacy policy is content.
BOILERPLATE_PHRASES = (
    "cookie policy", "cookie settings", "use cookies", "uses cookies", "use of cookies", "accept cookies",
    "accept all cookies", "privacy policy", "privacy notice", "terms of use", "terms of service",
    "terms and conditions", "all rights reserved", "enable javascript", "javascript is disabled",
    "javascript is required", "requires javascript", "javascript must be enabled",
    "browser does not support", "lorem ipsum", "subscribe to our newsletter", "sign up for our newsletter",
    "skip to content", "skip to main content", "share on facebook", "share on twitter", "follow us on",
)
# Lines that are nothing but one navigation control.
NAV_LINES = frozenset({
    "home", "menu", "search", "share", "tweet", "print", "login", "log in", "logout", "log out",
    "sign in", "sign up", "register", "subscribe", "next", "previous", "prev", "back", "back to top",
    "read more", "continue reading", "main menu", "toggle navigation", "show more", "load more",
})
_NAV_SEPARATORS = re.compile(r"\s*[|•·»›]\s*")
_NAV_WORD = re.compile(r"[^\W\d_][\w'&.-]*")  # "About", "FAQ", "Q&A": starts with a letter, no code chars
_NAV_STRIP = " \t.:!>»›<«‹-"


@lru_cache(maxsize=16)
def _phrase_regex(phrases: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(re.escape(p) for p in phrases) + r")\b", re.IGNORECASE)


def _is_nav_line(line: str) -> bool:
    if line.strip(_NAV_STRIP).lower() in NAV_LINES:
        return True
    if line.startswith("|") or line.endswith("|"):  # a table row, not a menu
        return False
    parts = _NAV_SEPARATORS.split(line)
    if len(parts) < 3 or sum(len(p.split()) for p in parts) > 20:
        return False
    return all(0 < len(p.split()) <= 4 and all(_NAV_WORD.fullmatch(w) for w in p.split()) for p in parts)


def remove_boilerplate_lines(text: str, phrases: tuple[str, ...] = BOILERPLATE_PHRASES, max_words: int = 30,
                             drop_nav: bool = True, drop_curly: bool = False) -> tuple[str, int]:
    """(text without boilerplate lines, number of lines removed).

    A line is removed when it contains one of `phrases` and has at most `max_words` words, when it is
    a navigation list ("Home | About | Contact", "Docs » API » Text", a lone "Read more") and `drop_nav`
    is set, or when it contains "{" and `drop_curly` is set (C4 drops such pages as code or templates;
    off by default because the built-in corpus is documentation with code). Indented lines are always
    kept: they are code, quotes or tables, and boilerplate extracted from HTML is never indented.
    """
    pattern = _phrase_regex(tuple(phrases)) if phrases else None
    kept, removed = [], 0
    for line in text.split("\n"):
        if line and not line[0].isspace() and (
            (pattern is not None and len(line.split()) <= max_words and pattern.search(line))
            or (drop_curly and "{" in line)
            or (drop_nav and _is_nav_line(line))
        ):
            removed += 1
        else:
            kept.append(line)
    if not removed:
        return text, 0
    return _BLANK_RUNS.sub("\n\n", "\n".join(kept)).strip("\n"), removed


# ------------------------------------------------------------------------------------------- quality

R_WORD_COUNT = "gopher_word_count"
R_MEAN_WORD_LENGTH = "gopher_mean_word_length"
R_SYMBOL_RATIO = "gopher_symbol_ratio"
R_BULLET_LINES = "gopher_bullet_lines"
R_ELLIPSIS_LINES = "gopher_ellipsis_lines"
R_STOP_WORDS = "gopher_stop_words"
R_ALPHA_WORDS = "gopher_alpha_words"
R_DUP_LINES = "gopher_dup_lines"
R_DUP_PARAGRAPHS = "gopher_dup_paragraphs"
R_TOP_NGRAM = "gopher_top_ngram"
R_DUP_NGRAM = "gopher_dup_ngram"
# The order quality_reason checks in; a document failing several rules is counted under the first.
RULE_ORDER = (R_WORD_COUNT, R_MEAN_WORD_LENGTH, R_SYMBOL_RATIO, R_BULLET_LINES, R_ELLIPSIS_LINES,
              R_STOP_WORDS, R_ALPHA_WORDS, R_DUP_LINES, R_DUP_PARAGRAPHS, R_TOP_NGRAM, R_DUP_NGRAM)

# Gopher's stop words: real English prose has at least two of them, boilerplate and word salad often not.
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS = ("•", "-", "*", "‣", "–", "·", "▪", "●")
ELLIPSES = ("...", "…")
_NO_ALPHA_WORD = re.compile(r"(?<!\S)(?:[^\w\s]|[\d_])+(?!\S)")  # a word without a letter ("42", "-->")
_WORD_CHAR = re.compile(r"\w")  # a letter-free word without one is punctuation only ("|", "+---+", "...")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")


@dataclass(frozen=True)
class QualityRules:
    """Document-level thresholds; None (or an empty tuple) switches a rule off. Gopher's value in [ ]."""

    # Word counts outside this range are stubs or dumps. [50, 100_000]
    min_words: int | None = 50
    max_words: int | None = 100_000
    # Mean length of words that are not pure punctuation: short is word salad, long is URLs/hashes. [3, 10]
    min_mean_word_length: float | None = 3.0
    max_mean_word_length: float | None = 10.0
    # '#' per word and '...' per word, each (hashtag spam, truncated teasers). [0.1]
    max_symbol_word_ratio: float | None = 0.1
    # Lines starting with a bullet; near 1 means a list of links. [0.9]
    max_bullet_lines: float | None = 0.9
    # Lines ending with an ellipsis; teasers of other pages. [0.3]
    max_ellipsis_lines: float | None = 0.3
    # Occurrences of STOP_WORDS; fewer means not English prose. [2]
    min_stop_words: int | None = 2
    # Words with at least one letter. [0.8] Looser here: reST tables and code examples are full of
    # letter-free words; the lowest pydoc topic is at 0.70.
    min_alpha_words: float | None = 0.65
    # Lines and paragraphs that repeat an earlier one, by count and by characters. [0.3, 0.2, 0.3, 0.2]
    # Looser for line characters: reST tables repeat their '+----+' rulers (pydoc's highest: 0.22).
    max_dup_lines: float | None = 0.3
    max_dup_line_chars: float | None = 0.25
    max_dup_paragraphs: float | None = 0.3
    max_dup_paragraph_chars: float | None = 0.2
    # (n, max fraction of word characters in the most frequent n-gram). [(2, .2), (3, .18), (4, .16)]
    max_top_ngram_chars: tuple[tuple[int, float], ...] = ((2, 0.2), (3, 0.18), (4, 0.16))
    # (n, max fraction of word characters inside repeats of an earlier n-gram; see dup_ngram_fraction).
    # [(5, .15), (6, .14), (7, .13), (8, .12), (9, .11), (10, .10)]
    max_dup_ngram_chars: tuple[tuple[int, float], ...] = (
        (5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))


DEFAULT_RULES = QualityRules()
# The paper's thresholds, for web crawls.
GOPHER_RULES = QualityRules(min_alpha_words=0.8, max_dup_line_chars=0.2)


def _dup_fractions(items: list[str], total_chars: int) -> tuple[float, float]:
    """(fraction of items that repeat an earlier one, their share of total_chars)."""
    counts = Counter(items)
    dup_chars = sum((c - 1) * len(s) for s, c in counts.items() if c > 1)
    return (len(items) - len(counts)) / max(len(items), 1), dup_chars / max(total_chars, 1)


def _ngrams(words: list[str], n: int) -> zip:
    return zip(*(words[i:] for i in range(n)), strict=False)  # stops at the shortest: len(words) - n + 1


def top_ngram_fraction(words: list[str], n: int, word_chars: int) -> float:
    """Share of word characters in the most frequent n-gram (all its occurrences)."""
    counts = Counter(_ngrams(words, n))
    if not counts:
        return 0.0
    gram, count = counts.most_common(1)[0]
    return count * sum(map(len, gram)) / max(word_chars, 1)


def dup_ngram_fraction(words: list[str], n: int, prefix: list[int]) -> float:
    """Share of word characters covered by repeats of an earlier n-gram, each character counted once
    however many repeats overlap it. The first occurrence is not a duplicate, as in datatrove (FineWeb's
    Gopher filter), which however skips n words after each repeat instead of counting overlaps exactly.
    prefix[i] = characters in words[:i]."""
    grams = list(_ngrams(words, n))
    first = dict(zip(reversed(grams), range(len(grams) - 1, -1, -1), strict=True))  # n-gram -> first index
    if len(first) == len(grams):
        return 0.0
    covered = end = 0  # end: words before it are already counted
    for i in compress(range(len(grams)), map(ne, map(first.__getitem__, grams), range(len(grams)))):
        covered += prefix[i + n] - prefix[i if i > end else end]
        end = i + n
    return covered / max(prefix[-1], 1)


def _letter_free_words(text: str) -> tuple[list[str], list[str]]:
    """(words without a letter, the punctuation-only ones among them): one regex pass for both."""
    no_alpha = _NO_ALPHA_WORD.findall(text)
    return no_alpha, [w for w in no_alpha if not _WORD_CHAR.search(w)]


def quality_reason(text: str, rules: QualityRules = DEFAULT_RULES) -> str:
    """'' when the document passes every rule, else the first failing rule's name (see RULE_ORDER)."""
    r = rules
    words = text.split()
    n = len(words)
    if (r.min_words is not None and n < r.min_words) or (r.max_words is not None and n > r.max_words):
        return R_WORD_COUNT
    if not n:
        return ""  # every rule below is a ratio over words; nothing to judge
    no_alpha, punct = _letter_free_words(text)
    if r.min_mean_word_length is not None or r.max_mean_word_length is not None:
        mean = (sum(map(len, words)) - sum(map(len, punct))) / max(n - len(punct), 1)
        if (r.min_mean_word_length is not None and mean < r.min_mean_word_length) or (
                r.max_mean_word_length is not None and mean > r.max_mean_word_length):
            return R_MEAN_WORD_LENGTH
    if r.max_symbol_word_ratio is not None and max(
            text.count("#"), text.count("...") + text.count("…")) / n > r.max_symbol_word_ratio:
        return R_SYMBOL_RATIO
    if r.max_bullet_lines is not None or r.max_ellipsis_lines is not None:
        lines = [line for line in map(str.strip, text.split("\n")) if line]
        if r.max_bullet_lines is not None and (
                sum(map(str.startswith, lines, repeat(BULLETS))) / len(lines) > r.max_bullet_lines):
            return R_BULLET_LINES
        if r.max_ellipsis_lines is not None and (
                sum(map(str.endswith, lines, repeat(ELLIPSES))) / len(lines) > r.max_ellipsis_lines):
            return R_ELLIPSIS_LINES
    lower = text.lower().split()
    if r.min_stop_words is not None and sum(map(STOP_WORDS.__contains__, lower)) < r.min_stop_words:
        return R_STOP_WORDS
    if r.min_alpha_words is not None and 1 - len(no_alpha) / n < r.min_alpha_words:
        return R_ALPHA_WORDS
    if r.max_dup_lines is not None or r.max_dup_line_chars is not None:
        frac, chars = _dup_fractions([line for line in text.split("\n") if line.strip()], len(text))
        if (r.max_dup_lines is not None and frac > r.max_dup_lines) or (
                r.max_dup_line_chars is not None and chars > r.max_dup_line_chars):
            return R_DUP_LINES
    if r.max_dup_paragraphs is not None or r.max_dup_paragraph_chars is not None:
        frac, chars = _dup_fractions([p for p in _PARAGRAPH_BREAK.split(text.strip()) if p], len(text))
        if (r.max_dup_paragraphs is not None and frac > r.max_dup_paragraphs) or (
                r.max_dup_paragraph_chars is not None and chars > r.max_dup_paragraph_chars):
            return R_DUP_PARAGRAPHS
    if not (r.max_top_ngram_chars or r.max_dup_ngram_chars):
        return ""
    # n-grams over words with a letter or digit: '|' and '+----+' are table layout, not repeated content.
    content = list(filterfalse(set(punct).__contains__, lower))
    prefix = list(accumulate(map(len, content), initial=0))
    for k, limit in r.max_top_ngram_chars:
        if top_ngram_fraction(content, k, prefix[-1]) > limit:
            return R_TOP_NGRAM
    limits = sorted(r.max_dup_ngram_chars)
    for i, (k, limit) in enumerate(limits):
        frac = dup_ngram_fraction(content, k, prefix)
        if frac > limit:
            return R_DUP_NGRAM
        if frac <= min(lim for _, lim in limits[i:]):
            break  # larger n can only cover fewer characters, so every remaining rule passes
    return ""


def quality_score(text: str) -> float:
    """A label in [0, 1]: the mean of four signals, each in [0, 1] and higher for better prose —
    length (log of word count, full at 1000 words), letters (fraction of words with one), prose
    (stop-word density, full at 10% of words; English prose runs ~15%), and originality (1 minus the
    duplicated 5-gram character fraction). Cheap and smooth, for training a learned filter later."""
    lower = text.lower().split()
    n = len(lower)
    if not n:
        return 0.0
    no_alpha, punct = _letter_free_words(text)
    content = list(filterfalse(set(punct).__contains__, lower))
    length = min(1.0, math.log(n) / math.log(1000))
    letters = 1 - len(no_alpha) / n
    prose = min(1.0, sum(map(STOP_WORDS.__contains__, lower)) / n / 0.1)
    originality = 1 - dup_ngram_fraction(content, 5, list(accumulate(map(len, content), initial=0)))
    return (length + letters + prose + originality) / 4
