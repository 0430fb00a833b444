"""Markdown (what the model writes) to Slack mrkdwn, and Slack message markup back to plain text.

Slack's mrkdwn is not Markdown: bold is ``*x*``, italics ``_x_``, strike ``~x~``, links
``<url|text>``, no headings or tables, and ``&``, ``<``, ``>`` must be escaped everywhere
(even inside code). Mentions the model writes (``<@U123>``, ``<#C123>``) are kept; broadcast
mentions (``<!here>``, ``<!channel>``, ``<!everyone>``) and every other ``<!...>`` command are
escaped so a model cannot ping a whole channel, whichever way the text goes out: as mrkdwn
(``to_mrkdwn``) or as Markdown (``to_markdown_text``, for ``markdown_text``).
"""

from __future__ import annotations

import re

_FENCE = re.compile(r"^\s*(```+|~~~+)")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_RULE = re.compile(r"^\s{0,3}([-*_])(\s*\1){2,}\s*$")
_BULLET = re.compile(r"^(\s*)[-*+]\s+(?:\[( |x|X)\]\s+)?(.*)$")
_QUOTE = re.compile(r"^\s{0,3}>\s?(.*)$")
_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$")

_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
_IMAGE = re.compile(r"!\[([^\]]*)\]\((\S+?)(?:\s+\"[^\"]*\")?\)")
_LINK = re.compile(r"\[([^\]]+)\]\((\S+?)(?:\s+\"[^\"]*\")?\)")
_AUTOLINK = re.compile(r"<((?:https?|mailto):[^>\s]+)>")
_SLACK_REF = re.compile(r"<([@#][A-Z0-9]+(?:\|[^>]*)?)>")
_BOLD_ITALIC = re.compile(r"\*\*\*(?=\S)(.+?)(?<=\S)\*\*\*")
_BOLD = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_ITALIC_STAR = re.compile(r"(?<![*\w])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![*\w])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_TOKEN = re.compile("\x00(\\d+)\x00")

_BOLD_MARK = "\x01"


def escape(text: str) -> str:
    """Escape the three characters Slack treats as markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def neutralise(text: str) -> str:
    """Escape every ``<!`` (``<!here>``, ``<!channel>``, ``<!everyone>``, ``<!subteam^..>``), so
    no special mention reaches Slack, whatever the conversion let through."""
    return text.replace("<!", "&lt;!")


def to_markdown_text(markdown: str) -> str:
    """The model's Markdown as Slack's ``markdown_text`` takes it: unchanged but for broadcast
    mentions. Character for character, so a longer text gives a longer result (streams append)."""
    return neutralise(markdown)


def _link(url: str, label: str) -> str:
    label = label.replace("|", "/").replace("*", "").replace("`", "").strip()
    url = url.replace("&", "&amp;").replace("<", "%3C").replace(">", "%3E").replace("|", "%7C")
    if not label or label == url:
        return f"<{url}>"
    return f"<{url}|{escape(label)}>"


def inline(text: str) -> str:
    """Convert one line of Markdown inline markup to mrkdwn."""
    kept: list[str] = []

    def keep(value: str) -> str:
        kept.append(value)
        return f"\x00{len(kept) - 1}\x00"

    text = _INLINE_CODE.sub(lambda m: keep(f"`{escape(m.group(2).strip())}`"), text)
    text = _IMAGE.sub(lambda m: keep(_link(m.group(2), m.group(1) or "image")), text)
    text = _LINK.sub(lambda m: keep(_link(m.group(2), m.group(1))), text)
    text = _AUTOLINK.sub(lambda m: keep(f"<{m.group(1)}>"), text)
    text = _SLACK_REF.sub(lambda m: keep(f"<{m.group(1)}>"), text)
    text = escape(text)
    text = _BOLD_ITALIC.sub(lambda m: f"{_BOLD_MARK}_{m.group(1)}_{_BOLD_MARK}", text)
    text = _BOLD.sub(lambda m: f"{_BOLD_MARK}{m.group(2)}{_BOLD_MARK}", text)
    text = _ITALIC_STAR.sub(lambda m: f"_{m.group(1)}_", text)
    text = _STRIKE.sub(lambda m: f"~{m.group(1)}~", text)
    text = text.replace(_BOLD_MARK, "*")
    while _TOKEN.search(text):
        text = _TOKEN.sub(lambda m: kept[int(m.group(1))], text)
    return text


def _plain_bold(text: str) -> str:
    """Inline conversion for a line that will be wrapped in bold as a whole (a heading)."""
    text = re.sub(r"(\*\*|__)(.+?)\1", r"\2", text)
    converted = inline(text).strip()
    return f"*{converted}*" if converted else ""


def _is_table_start(lines: list[str], i: int) -> bool:
    return (
        i + 1 < len(lines)
        and lines[i].strip().startswith("|")
        and _TABLE_SEP.match(lines[i + 1]) is not None
    )


def to_mrkdwn(markdown: str) -> str:
    """Convert the model's Markdown to Slack mrkdwn, keeping code blocks verbatim.

    Works on partial text too (a streamed answer so far): an unclosed code block simply stays
    open.
    """
    lines = markdown.replace("\r\n", "\n").split("\n")
    out: list[str] = []
    fence: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _FENCE.match(line)
        if fence is not None:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                if line.strip() == m.group(1):
                    out.append("```")
                    fence = None
                    i += 1
                    continue
            out.append(escape(line))
            i += 1
            continue
        if m:
            # Slack shows a language tag as text, so it is dropped.
            fence = m.group(1)
            out.append("```")
            i += 1
            continue
        if _is_table_start(lines, i):
            out.append("```")
            while i < len(lines) and lines[i].strip().startswith("|"):
                out.append(escape(lines[i].strip()))
                i += 1
            out.append("```")
            continue
        out.append(_block_line(line))
        i += 1
    return neutralise("\n".join(out))


def _block_line(line: str) -> str:
    if _RULE.match(line):
        return "──────────"
    if m := _HEADING.match(line):
        return _plain_bold(m.group(1))
    if m := _BULLET.match(line):
        indent, box, rest = m.groups()
        mark = "" if box is None else ("☐ " if box == " " else "☑ ")
        return f"{indent}• {mark}{inline(rest)}"
    if m := _QUOTE.match(line):
        return f"> {inline(m.group(1))}"
    return inline(line)


# --- Slack markup in → plain text for the model ------------------------------------------

_USER_REF = re.compile(r"<@([UW][A-Z0-9]+)(?:\|([^>]*))?>")
_CHANNEL_REF = re.compile(r"<#([CGD][A-Z0-9]+)(?:\|([^>]*))?>")
_SPECIAL_REF = re.compile(r"<!(here|channel|everyone)(?:\|[^>]*)?>")
_SUBTEAM_REF = re.compile(r"<!subteam\^([A-Z0-9]+)(?:\|([^>]*))?>")
_URL_REF = re.compile(r"<([a-z][a-z0-9+.-]*:[^|>]+)(?:\|([^>]*))?>")


def to_plain(text: str, bot_user_id: str | None = None) -> str:
    """Turn a Slack message's markup into the text a person sees, minus mentions of the bot."""
    if bot_user_id:
        text = re.sub(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>", "", text)
    text = _USER_REF.sub(lambda m: f"@{m.group(2) or m.group(1)}", text)
    text = _CHANNEL_REF.sub(lambda m: f"#{m.group(2) or m.group(1)}", text)
    text = _SPECIAL_REF.sub(lambda m: f"@{m.group(1)}", text)
    text = _SUBTEAM_REF.sub(lambda m: f"@{m.group(2) or m.group(1)}", text)

    def url(m: re.Match[str]) -> str:
        target, label = m.group(1), m.group(2)
        if target.startswith("mailto:"):
            target = target[len("mailto:") :]
        if not label or label == target:
            return target
        return f"{label} ({target})"

    text = _URL_REF.sub(url, text)
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return re.sub(r"[ \t]{2,}", " ", text).strip()
