"""Text repairs and text red flags shared by `data check` (which reports) and `data clean` (which fixes).

Both use the same functions so that what `check` counts is exactly what `clean` changes, and a cleaned file
checks clean.
"""

from __future__ import annotations

import re

import ftfy

# Conservative on purpose: repair mojibake (UTF-8 read as Latin-1/Windows-1252 and the like), lone surrogates,
# terminal escapes and control characters, and nothing a writer may have meant (curly quotes, full-width
# letters, ligatures, HTML entities in code stay as they are).
_FIX = ftfy.TextFixerConfig(
    unescape_html=False, fix_latin_ligatures=False, fix_character_width=False, uncurl_quotes=False,
    fix_line_breaks=False, normalization=None, explain=False,
)

REPLACEMENT_CHAR = "\ufffd"  # bytes that were already lost before the file was written: nothing can restore them

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# Digit groups joined by spaces, dots or dashes, optionally with a +country code or (area code): checked for 8 to
# 15 digits in all (E.164's maximum), which keeps dates, prices and short codes out.
PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,5}\)[\s.-]?)?\d{2,6}(?:[\s.-]?\d{2,6}){1,3}(?!\w)")


TWO_DIGITS = re.compile(r"\d\d")  # a cheap scan that rules most texts out before the phone pattern runs
DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}")


def _looks_like_phone(candidate: str) -> bool:
    digits = sum(ch.isdigit() for ch in candidate)
    if not 8 <= digits <= 15 or DATE.fullmatch(candidate):
        return False
    if candidate.isdigit():  # a bare run of digits is more often an id, unless it has a national trunk prefix
        return candidate.startswith("0") and 10 <= digits <= 11
    return True


def fix_text(text: str) -> str:
    """Mojibake repaired, surrounding whitespace stripped. Idempotent: fix_text(fix_text(t)) == fix_text(t)."""
    if not text.isascii():  # pure ASCII cannot hold mojibake; skipping it keeps 1 GB checks fast
        text = ftfy.fix_text(text, _FIX)
    return text.strip()


def has_mojibake(text: str) -> bool:
    return not text.isascii() and ftfy.fix_text(text, _FIX) != text


def personal_data(text: str) -> list[str]:
    """Kinds of suspected personal data in the text: 'email', 'phone'."""
    kinds = []
    if "@" in text and EMAIL.search(text):
        kinds.append("email")
    if TWO_DIGITS.search(text) and any(_looks_like_phone(m.group()) for m in PHONE.finditer(text)):
        kinds.append("phone")
    return kinds
