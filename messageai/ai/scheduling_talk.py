"""The cheap local first pass of proactive scheduling: does a message talk of meeting at
some time? Pure Python, no model, nothing sent: two regular expressions, about 25 µs
for a sentence on this machine (`python -m timeit`), run in the scheduler's own task,
never on the actor's path.

Called by `ai.proactive.ProactiveScheduler` for each new message of a conversation
whose `proactive` setting is on. It fires on a time or a day ("friday",
"3pm", "tomorrow morning", "next week", "dec 3") together with a sign of arranging
something: a word of meeting ("meet", "call", "lunch", "free", "works for") or a
question. It is meant to fire too often rather than too rarely: the model, asked only
when it fires, decides whether times were proposed at all.
"""

from __future__ import annotations

import re

# Only the start of a long message is read: proposals are short.
MAX_CHARS = 1000

_DAYS = r"mon|tues?|wed(?:nes)?|thu(?:rs?)?|fri|sat(?:ur)?|sun"
_MONTHS = r"jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec"
_WHEN = re.compile(
    r"\b(?:"
    rf"(?:{_DAYS})(?:day)?s?"
    r"|today|tonight|tomorrow|weekend|next\s+week|this\s+week|end\s+of\s+the\s+week"
    r"|noon|midday|morning|afternoon|evening"
    r"|\d{1,2}(?::\d{2})?\s*(?:am|pm|a\.m\.|p\.m\.|h)"
    r"|\d{1,2}:\d{2}"
    rf"|(?:{_MONTHS})[a-z]*\.?\s+\d{{1,2}}(?:st|nd|rd|th)?"
    r"|\d{1,2}(?:st|nd|rd|th)"
    r")\b",
    re.IGNORECASE,
)
_ARRANGING = re.compile(
    r"\b(?:meet(?:ing|up)?s?|call|sync|catch\s+up|get\s+together|lunch|dinner|breakfast"
    r"|coffee|drinks|free|available|availability|works?\s+for|suits?|schedule|book"
    r"|how\s+about|what\s+about|shall\s+we|can\s+we|could\s+we|let'?s)\b",
    re.IGNORECASE,
)


def talks_of_meeting(body: str) -> bool:
    """Whether `body` names a time or day and arranges something (see the module)."""
    text = body[:MAX_CHARS]
    if not _WHEN.search(text):
        return False
    return "?" in text or _ARRANGING.search(text) is not None
