"""Token ids in, text deltas out, for one streamed answer: the text grows by decoding all the answer's tokens
(a token can complete a multi-byte character or change how the previous one detokenises), and nothing that could
still turn out to be the start of a stop string is sent. A stop string is cut with everything after it, even when
it arrives split across several tokens, so it never reaches the client."""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_STOPS = 4  # what OpenAI's API accepts


@dataclass
class TextStream:
    tokenizer: object
    stops: tuple[str, ...] = ()
    ids: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the text already sent
    text: str = ""
    stopped: bool = False

    def push(self, token_id: int) -> str:
        """Add one generated token; returns the text that is now safe to send (maybe empty). After a stop
        string was seen, `stopped` is True and nothing more is returned."""
        if self.stopped:
            return ""
        self.ids.append(token_id)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = self._first_stop()
        if cut is not None:
            self.stopped = True
            self.text = self.text[:cut]
            return self._send(cut)
        return self._send(self._safe_end())

    def finish(self) -> str:
        """Whatever is still held back, at the end of the answer (no stop string can complete any more)."""
        return "" if self.stopped else self._send(len(self.text))

    def _send(self, end: int) -> str:
        end = max(end, self.sent)
        delta, self.sent = self.text[self.sent:end], end
        return delta

    def _first_stop(self) -> int | None:
        # a stop string can only newly appear in text not yet sent, or straddling its start
        start = max(0, self.sent - max((len(s) for s in self.stops), default=0))
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        return min(hits) if hits else None

    def _safe_end(self) -> int:
        text = self.text
        end = len(text)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for its next byte
            end = len(text.rstrip("\ufffd"))
        held = 0
        for stop in self.stops:  # the longest end of the text that a stop string starts with
            for n in range(min(len(stop) - 1, end), held, -1):
                if text[end - n:end] == stop[:n]:
                    held = n
                    break
        return end - held
