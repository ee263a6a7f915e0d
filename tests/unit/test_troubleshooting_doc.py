"""docs/troubleshooting.md quotes messages crisp still gives.

Each message quoted there (the lines of its plain ``` blocks) must contain a message text of
crisp's source of at least 20 characters: a string constant, or an f-string's fixed parts in
order. A message reworded in the code fails here until its entry is updated.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "troubleshooting.md"
# Every module but the generated protobuf code (crisp/api), and the demo pod's script.
SOURCES = [*sorted(p for p in (ROOT / "src" / "crisp").rglob("*.py")
                   if p.parent.name != "api"), ROOT / "scripts" / "demo_pod.py"]
MINIMUM = 20


def quoted_messages(markdown: str) -> list[str]:
    """The lines of the fenced blocks without a language: the messages as they appear."""
    messages: list[str] = []
    fence: str | None = None  # the language of the open block, "" for none
    for line in markdown.splitlines():
        if line.startswith("```"):
            fence = line[3:].strip() if fence is None else None
        elif fence == "" and line.strip():
            messages.append(line)
    return messages


def source_patterns() -> list[re.Pattern[str]]:
    """Every message line in the source: of a string constant, or of an f-string, whose fixed
    parts must appear in order (anything between them); short lines are left out."""
    texts: list[str] = []  # "\0" where an f-string has a placeholder
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        in_fstrings: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                in_fstrings.update(id(part) for part in node.values)
                texts.append("".join(part.value if isinstance(part, ast.Constant) else "\0"
                                     for part in node.values))
            elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and id(node) not in in_fstrings):
                texts.append(node.value)
    patterns = set()
    for text in texts:
        for line in text.splitlines():
            if len(line.replace("\0", "").strip()) >= MINIMUM:
                patterns.add(".*?".join(re.escape(piece) for piece in line.strip().split("\0")))
    return [re.compile(pattern) for pattern in sorted(patterns)]


def unmatched(messages: list[str], patterns: list[re.Pattern[str]]) -> list[str]:
    return [m for m in messages if not any(p.search(m) for p in patterns)]


def test_every_quoted_message_is_one_crisp_gives() -> None:
    messages = quoted_messages(DOC.read_text())
    assert len(messages) >= 30
    assert unmatched(messages, source_patterns()) == []


def test_a_reworded_message_is_caught() -> None:
    message = ("INVALID_ARGUMENT: runtime handler 'kata' is not configured "
               "(configured: runc)")
    patterns = source_patterns()
    assert unmatched([message], patterns) == []
    assert unmatched([message.replace("is not configured", "is unknown")], patterns)
