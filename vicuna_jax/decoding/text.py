"""From token ids to text as it streams: stop strings, the text that is safe to show, and EOS ids.

Streaming text cannot simply decode each new token: a byte-fallback tokenizer spells a multi-byte UTF-8
character as several byte tokens, which decode to U+FFFD until the last one arrives; and a stop string can
arrive split over several tokens or chunks, so text that might be the start of one must not be shown yet.
`TextStream` holds both back and releases text only once it is final.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_REPLACEMENT = "\ufffd"  # what an unfinished UTF-8 character decodes to


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest stop string starts in `text`, or None."""
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def tokens_until_stop(tokenizer: Any, ids: Sequence[int], stops: Sequence[str], new: int) -> int:
    """How many tokens it took for a stop string to appear, given that it appeared within the last `new`
    (usage counts those, not the whole chunk)."""
    for k in range(max(len(ids) - new, 0) + 1, len(ids) + 1):
        if first_stop(tokenizer.decode(list(ids[:k])), stops) is not None:
            return k
    return len(ids)


def resolve_eos_ids(cfg: Any, tokenizer: Any = None, eos_token_ids: Sequence[int] | None = None,
                    extra: Sequence[int] = ()) -> tuple[int, ...]:
    """The token ids that end a sequence: `eos_token_ids` when given, else every EOS id of the model config
    (Llama-3 has several); plus `extra` (the chat template's end-of-turn ids) and the tokenizer's EOS id."""
    eos = list(eos_token_ids) if eos_token_ids is not None else list(cfg.eos_token_ids)
    eos += [int(t) for t in extra]
    if tokenizer is not None and getattr(tokenizer, "eos_id", None) not in (None, -1):
        eos.append(int(tokenizer.eos_id))
    return tuple(sorted({int(t) for t in eos}))


class TextStream:
    """The text of one sequence as its tokens arrive, released in deltas that never change afterwards.

    `extend(ids)` returns the newly visible text: everything decoded so far except an unfinished UTF-8
    character and the last `len(longest stop) - 1` characters (they might start a stop string). Once a stop
    string appears, `stopped` is set, `text` ends before it and `stop_tokens` is how many tokens it took;
    `finish()` returns whatever is still held back when the sequence ends otherwise.
    """

    def __init__(self, tokenizer: Any, stop_strings: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop_strings = tuple(stop_strings)
        self.ids: list[int] = []
        self.text = ""  # the decoded text so far (cut before the stop string, once one appeared)
        self.sent = ""  # the prefix of `text` already released
        self.stopped = False
        self.stop_tokens = 0  # once stopped: the tokens it took for the stop string to appear
        self._hold = max((len(s) - 1 for s in self.stop_strings if s), default=0)

    def extend(self, new_ids: Sequence[int]) -> str:
        """Appends tokens; returns the text that became safe to show (often "")."""
        if self.stopped:
            return ""
        self.ids.extend(int(t) for t in new_ids)
        text = self.tokenizer.decode(self.ids)
        cut = first_stop(text, self.stop_strings)
        if cut is not None:
            self.stopped = True
            self.stop_tokens = tokens_until_stop(self.tokenizer, self.ids, self.stop_strings, len(new_ids))
            self.text = text[:cut]
            return self.finish()
        self.text = text
        visible = text.rstrip(_REPLACEMENT)
        if self._hold:
            visible = visible[:len(visible) - self._hold]
        return self._release(visible)

    def finish(self) -> str:
        """The rest of the text: the sequence has ended, so nothing is held back any more."""
        return self._release(self.text)

    def _release(self, upto: str) -> str:
        # Text already released never changes: if a new decode rewrites it, wait until it agrees again.
        if len(upto) > len(self.sent) and upto.startswith(self.sent):
            delta, self.sent = upto[len(self.sent):], upto
            return delta
        return ""
