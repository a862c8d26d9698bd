"""Message-level text repairs for ShareGPT data: HTML -> Markdown, code fences, page artefacts, control chars.

Every step is linear in the message length (no regex that rescans the text from each position, no replace
loop over the text per code block), so a hostile message costs time in proportion to its size; the cleaner
also caps that size and the time per record. The one step that leans on third-party code, HTML conversion,
refuses HTML nested deeper than `MAX_HTML_DEPTH` and turns any failure into `HtmlError`. Python's html.parser
is quadratic on an unterminated tag (`"<div>" + "<a " * 8000`: seconds; CVE-2025-6069, fixed only in newer
Pythons): `defuse_unterminated_tags` finds such a tail in one pass first and makes it text.
"""

from __future__ import annotations

import functools
import re
from collections import Counter

MAX_HTML_DEPTH = 100  # ShareGPT pages nest ~6-15 deep; markdownify recurses ~4 frames per level


class HtmlError(ValueError):
    """HTML that cannot be converted (too deeply nested, or the converter failed on it)."""


# ShareGPT stored assistant replies as page HTML starting with a block tag. Only such messages are converted:
# a Markdown reply that merely shows HTML in a code block, or a user asking about <div>, must stay as it is.
_HTML_MESSAGE = re.compile(r"^\s*<(?:div|p|pre|ol|ul|h[1-6]|table|blockquote)\b[^>]*>", re.I)
_COUNTER = re.compile(r"^\s*\d+ / \d+(?=<|\n|[A-Z]|$)")
_COPY_CODE = re.compile(r"(```[\w+#.-]*)[ \t]*Copy code[ \t]*\n?")
_COPY_CODE_LINE = re.compile(r"^[ \t]*Copy code[ \t]*$\n?", re.M)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # from a "\udXXX" JSON escape without its pair
_FENCE_LINE = re.compile(r"^[ \t]*```", re.M)
_INLINE_FENCE = re.compile(r"(?<=[^\n])```(?=[\w+#.-]*\n)")
_CLOSING_FENCE = re.compile(r"[ \t]*```[ \t]*")
_BLANK_RUN = re.compile(r"\n{3,}")
_CODE_KEY = re.compile(r"VJXCODEBLOCK(\d+)X")


@functools.cache
def load_html_converter():
    """The Markdown converter (imports BeautifulSoup and markdownify on first use)."""
    from markdownify import MarkdownConverter

    class ShareGPTConverter(MarkdownConverter):
        """Drops buttons and icons with their text ("Copy code") instead of editing the tree: removing
        many siblings one by one from a BeautifulSoup tree is quadratic."""

        def convert_button(self, el, text, parent_tags):
            return ""

        convert_svg = convert_button

    return ShareGPTConverter(heading_style="ATX", bullets="-", escape_asterisks=False,
                             escape_underscores=False, escape_misc=False, newline_style="spaces")  # fmt: skip


def html_depth(soup) -> int:
    """The deepest tag nesting in a parsed tree (iterative: the tree may be deeper than Python's stack)."""
    from bs4 import Tag

    deepest, stack = 0, [(soup, 0)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in node.contents if isinstance(child, Tag))
    return deepest


def defuse_unterminated_tags(text: str) -> str:
    """`text` with the '<' of an unterminated tag at its end, and every '<' after it, written as `&lt;`.

    html.parser stops where a tag (or comment, declaration) never ends - for `<a x='>' <a ...`, never
    outside quotes - and, when the document is closed, rescans the rest of the text from each '<' in it:
    quadratic. One `feed` (linear: it stops at that point) says where the rest starts; as text it reads the
    same as the parser made it when the rest is one broken tag (a reply cut off mid-tag), and costs one
    pass."""
    from html.parser import HTMLParser

    probe = HTMLParser(convert_charrefs=False)  # as BeautifulSoup's html.parser builder runs it
    probe.feed(text)
    tail = probe.rawdata
    if not tail.startswith("<") or probe.cdata_elem is not None:
        return text
    return text[: len(text) - len(tail)] + tail.replace("<", "&lt;")


def html_to_markdown(text: str) -> str:
    """ShareGPT HTML -> Markdown: code blocks become fenced blocks with their language; buttons go.

    Raises HtmlError for HTML nested deeper than MAX_HTML_DEPTH or that the converter fails on."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(defuse_unterminated_tags(text), "html.parser")
    depth = html_depth(soup)
    if depth > MAX_HTML_DEPTH:
        raise HtmlError(f"HTML nested {depth} tags deep (limit {MAX_HTML_DEPTH})")
    blocks: list[str] = []
    for pre in soup.find_all("pre"):
        code = pre.find("code")
        lang = ""
        for cls in (code.get("class") or []) if code is not None else []:
            if cls.startswith("language-"):
                lang = cls[len("language-") :]
        body = (code if code is not None else pre).get_text()
        if code is None:
            body = body.replace("Copy code", "")
        key = f"VJXCODEBLOCK{len(blocks)}X"
        blocks.append(f"```{lang}\n{body.strip(chr(10))}\n```")
        pre.name, pre.attrs, pre.string = "p", {}, key  # in place: replace_with is linear per call
    try:
        md = load_html_converter().convert_soup(soup)
    except RecursionError as e:  # a backstop: the depth check should have caught it
        raise HtmlError(f"HTML too deeply nested to convert ({e})") from None
    lines = md.split("\n")
    md = "\n".join([line.rstrip(" \t") for line in lines[:-1]] + lines[-1:])

    def block(m: re.Match) -> str:
        k = int(m.group(1))
        return "\n\n" + blocks[k] + "\n\n" if k < len(blocks) else m.group(0)

    return _CODE_KEY.sub(block, md)


def repair_fences(text: str) -> str:
    """Put every ``` fence on its own line and close a block left open at the end."""
    text = _INLINE_FENCE.sub("\n```", text)
    if len(_FENCE_LINE.findall(text)) % 2 == 1:
        text = text.rstrip("\n") + "\n```"
    return text


def collapse_blank_lines(text: str) -> str:
    """At most one blank line in a row, outside code blocks (code keeps its own spacing).

    A code block runs from a line starting with ``` to the next line that is only ``` (and blanks); an
    opening fence with no such line after it is plain text. One pass over the lines.
    """
    lines = text.split("\n")
    closing = [bool(_CLOSING_FENCE.fullmatch(line)) for line in lines]
    last_closing = max((k for k, c in enumerate(closing) if c), default=-1)
    out: list[str] = []
    plain: list[str] = []  # lines outside code blocks, not yet collapsed
    k = 0
    while k < len(lines):
        line = lines[k]
        if k < last_closing and line.lstrip(" \t").startswith("```"):
            end = next(j for j in range(k + 1, len(lines)) if closing[j])
            out.append(_BLANK_RUN.sub("\n\n", "\n".join(plain + [""])))
            out.append("\n".join(lines[k : end + 1]))
            plain = [""]
            k = end + 1
            continue
        plain.append(line)
        k += 1
    out.append(_BLANK_RUN.sub("\n\n", "\n".join(plain)))
    return "".join(out)


def clean_text(text: str, fixes: Counter, convert_html: bool = True) -> str:
    """All message-level repairs (HTML conversion only if `convert_html`). Counts what changed in `fixes`.

    Raises HtmlError when the message is HTML that cannot be converted."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    counter = _COUNTER.match(text)
    if counter:
        text = text[counter.end() :]
        fixes["regenerate_counter_stripped"] += 1
    if convert_html and _HTML_MESSAGE.match(text):
        text = html_to_markdown(text)
        fixes["html_converted"] += 1
    if "Copy code" in text:
        text = _COPY_CODE.sub(r"\1\n", text)
        text = _COPY_CODE_LINE.sub("", text)
        fixes["copy_code_stripped"] += 1
    if _CONTROL.search(text):
        text = _CONTROL.sub("", text)
        fixes["control_chars_removed"] += 1
    if _LONE_SURROGATE.search(text):
        text = _LONE_SURROGATE.sub("", text)
        fixes["lone_surrogates_removed"] += 1
    if "```" in text:
        fixed = repair_fences(text)
        if fixed != text:
            fixes["fences_repaired"] += 1
        text = fixed
    return collapse_blank_lines(text).strip()
