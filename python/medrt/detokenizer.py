"""Incremental detokenization and stop strings.

Decoding the whole output after every token costs O(n^2) over a completion. Instead, as
vLLM and TGI do, we decode a short window: ``tokens[prefix:read]`` was decoded last time and
``tokens[prefix:]`` now; the text past the old window's text is new. Decoding the window with
a little context (instead of the new tokens alone) keeps the spaces that tokenizers attach to
a token's start. While the window's text ends in U+FFFD, the newest token holds only part of a
multi-byte UTF-8 character, so nothing is emitted until the character is complete.

Stop strings are matched on the text. Text that could be the beginning of a stop string is
held back, so a stop string split over several tokens is neither shown in a stream nor
missed.
"""

from __future__ import annotations

from collections.abc import Sequence

from medrt.tokenizer import Tokenizer

# Prompt tokens kept as decoding context for the first generated tokens.
_PROMPT_CONTEXT = 5
# Tokens before the window are dropped once this many pile up.
_TRIM_AT = 256


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text, one token at a time."""

    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: Sequence[int],
                 skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._tokens = list(prompt_token_ids[-_PROMPT_CONTEXT:])
        self._prefix = 0
        self._read = len(self._tokens)

    def _decode(self, tokens: Sequence[int]) -> str:
        return self._tokenizer.decode(tokens, skip_special_tokens=self._skip_special)

    def push(self, token_id: int) -> str:
        """Adds one token; returns the text it completes (often "", e.g. mid-character)."""
        self._tokens.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """Text still held (an incomplete character at the very end), as the tokenizer decodes it."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self._read == len(self._tokens):
            return ""
        old = self._decode(self._tokens[self._prefix:self._read])
        new = self._decode(self._tokens[self._prefix:])
        if len(new) <= len(old) and not final:
            return ""
        if new.endswith("\ufffd") and not final:
            return ""
        self._prefix, self._read = self._read, len(self._tokens)
        if self._prefix >= _TRIM_AT:
            del self._tokens[:self._prefix]
            self._read -= self._prefix
            self._prefix = 0
        return new[len(old):]


class StopStringMatcher:
    """Finds stop strings in a growing text and says how much of it is safe to show."""

    def __init__(self, stop: Sequence[str], include_stop_str_in_output: bool = False) -> None:
        self._stop = list(stop)
        self._include = include_stop_str_in_output

    def find(self, text: str, num_new_chars: int) -> tuple[int, str] | None:
        """The earliest stop string ending in the last ``num_new_chars`` characters.

        Returns (length the text is cut to, the stop string) or None.
        """
        best: tuple[int, str] | None = None
        for s in self._stop:
            start = max(0, len(text) - num_new_chars - len(s) + 1)
            idx = text.find(s, start)
            if idx >= 0 and (best is None or idx < best[0]):
                best = (idx, s)
        if best is None:
            return None
        idx, s = best
        return (idx + len(s) if self._include else idx), s

    def safe_length(self, text: str) -> int:
        """Length of the prefix of ``text`` that cannot turn into the start of a stop string."""
        hold = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(text)), hold, -1):
                if text.endswith(s[:k]):
                    hold = k
                    break
        return len(text) - hold


class TextStream:
    """The text of one completion: detokenized incrementally, cut at stop strings.

    ``text`` is everything decoded so far; ``take_delta()`` returns the part that became safe
    to show since the last call (all of it once the stream is finished).
    """

    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: Sequence[int], *,
                 stop: Sequence[str] = (), include_stop_str_in_output: bool = False,
                 skip_special_tokens: bool = True, min_tokens: int = 0) -> None:
        self._detok = IncrementalDetokenizer(tokenizer, prompt_token_ids, skip_special_tokens)
        self._matcher = StopStringMatcher(stop, include_stop_str_in_output)
        self._min_tokens = min_tokens
        self._num_tokens = 0
        self._shown = 0
        self.text = ""
        self.stop_string: str | None = None
        self.finished = False

    def push(self, token_id: int) -> bool:
        """Adds one generated token; True when it completed a stop string (stream finished)."""
        self._num_tokens += 1
        new = self._detok.push(token_id)
        if not new:
            return False
        self.text += new
        # Like vLLM, stop strings count only once min_tokens tokens exist.
        if self._num_tokens < self._min_tokens:
            return False
        match = self._matcher.find(self.text, len(new))
        if match is None:
            return False
        cut, self.stop_string = match
        self.text = self.text[:cut]
        self.finished = True
        return True

    def finish(self) -> None:
        """Ends the stream without a stop string: any held text becomes visible."""
        if not self.finished:
            self.text += self._detok.flush()
            self.finished = True

    def take_delta(self) -> str:
        end = len(self.text) if self.finished else self._matcher.safe_length(self.text)
        end = max(end, self._shown)
        delta = self.text[self._shown:end]
        self._shown = end
        return delta

    @property
    def shown_text(self) -> str:
        """The text released so far by ``take_delta``."""
        return self.text[:self._shown]
