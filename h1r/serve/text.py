"""One choice's text as tokens arrive: reasoning/content routing, incremental detokenisation, stop
strings, and the hold-back that keeps a half-seen stop string out of a stream.

Streaming and non-streaming responses both feed token ids through ChoiceText, so a streamed answer
concatenates to exactly the non-streamed one.
"""

from __future__ import annotations

from h1r.engine.detokenizer import IncrementalDetokenizer
from h1r.serve.reasoning import CONTENT, REASONING, ReasoningRouter


class _Segment:
    def __init__(self, tokenizer, context_ids: list[int]):
        self.detok = IncrementalDetokenizer(tokenizer, context_ids, skip_special_tokens=True)
        self.text = ""
        self.released = 0  # characters already handed out
        self.started = False


class ChoiceText:
    def __init__(self, tokenizer, prompt_ids: list[int], router: ReasoningRouter, stop: list[str],
                 include_stop_str: bool = False):
        self.tok = tokenizer
        self.router = router
        self.stop = list(stop)
        self.include_stop_str = include_stop_str
        self.hold = max((len(s) for s in self.stop), default=1) - 1  # chars a stop string may still claim
        self.context = list(prompt_ids[-8:])  # detokeniser context for the next segment
        self.segments: dict[str, _Segment] = {}
        self.stopped = False  # a stop string was found: later tokens add no text
        self.token_offsets: list[int] = []  # per token: where its text starts in its segment

    def add(self, token_ids: list[int]) -> dict[str, str]:
        """Feed new tokens; returns the text that may be released now, by segment."""
        for seg_name, ids in self.router.route(token_ids):
            seg = self._segment(seg_name)
            for t in ids:
                self.context.append(t)
                self.token_offsets.append(len(seg.text))
                if self.stopped:
                    continue
                before = len(seg.text)
                seg.text += seg.detok.add(t)
                self._apply_stop(seg, before)
        return self._release(final=False)

    def finish(self) -> dict[str, str]:
        """The choice is done: release everything held back, a trailing partial character included."""
        if not self.stopped:
            for seg in self.segments.values():
                before = len(seg.text)
                seg.text += seg.detok.flush()
                self._apply_stop(seg, before)
        return self._release(final=True)

    @property
    def reasoning(self) -> str | None:
        seg = self.segments.get(REASONING)
        return seg.text if seg is not None else None

    @property
    def content(self) -> str | None:
        seg = self.segments.get(CONTENT)
        return seg.text if seg is not None and seg.text else None

    @property
    def text(self) -> str:
        """Everything, for plain completions (no reasoning split)."""
        return "".join(s.text for s in self.segments.values())

    def _segment(self, name: str) -> _Segment:
        seg = self.segments.get(name)
        if seg is None:
            seg = self.segments[name] = _Segment(self.tok, self.context[-8:])
        return seg

    def _apply_stop(self, seg: _Segment, before: int) -> None:
        """Cut at the first stop string that ends in the text added after `before`."""
        if not self.stop or len(seg.text) == before:
            return
        hits = [(j, s) for s in self.stop if (j := seg.text.find(s, max(0, before - len(s) + 1))) >= 0]
        if hits:
            j, s = min(hits)
            seg.text = seg.text[: j + (len(s) if self.include_stop_str else 0)]
            self.stopped = True

    def _release(self, final: bool) -> dict[str, str]:
        out = {}
        for name, seg in self.segments.items():
            # an earlier segment is complete once a later one has started
            done = final or self.stopped or name == REASONING and CONTENT in self.segments
            end = len(seg.text) if done else max(seg.released, len(seg.text) - self.hold)
            if end > seg.released:
                out[name] = seg.text[seg.released:end]
                seg.released = end
        return out
