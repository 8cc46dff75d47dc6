"""What one DeepConf run on one problem produced: the traces and the votes, JSON-serialisable."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from h1r.deepconf.confidence import DEFAULT_TAIL, DEFAULT_WINDOW, TraceConfidence, trace_confidence
from h1r.deepconf.voting import VoteResult, answer_of

Stage = Literal["warmup", "final"]
# "stop": EOS / stop string; "length": max_tokens; "confidence": the DeepConf stop hook fired
FINISH_REASONS = ("stop", "length", "confidence")


def _nan_to_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


@dataclass
class TraceRecord:
    """One generated trace. `kept` = passed the confidence filter (it votes if it also has an answer)."""

    answer: str | None
    num_tokens: int  # tokens generated and counted (a stopped trace: up to and including the stop token)
    finish_reason: str
    confidence: TraceConfidence
    stage: Stage = "final"
    kept: bool = True
    text: str | None = None
    token_confidences: list[float] | None = None

    @property
    def voted(self) -> bool:
        return self.kept and self.answer is not None

    def to_dict(self, text: bool = False, token_confidences: bool = False) -> dict:
        d = {
            "answer": self.answer,
            "num_tokens": self.num_tokens,
            "finish_reason": self.finish_reason,
            "stage": self.stage,
            "kept": self.kept,
            "confidence": {k: _nan_to_none(v) for k, v in self.confidence.to_dict().items()},
        }
        if text:
            d["text"] = self.text
        if token_confidences:
            d["token_confidences"] = self.token_confidences
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TraceRecord:
        conf = {k: (math.nan if v is None else float(v)) for k, v in d["confidence"].items()}
        return cls(
            answer=d["answer"],
            num_tokens=int(d["num_tokens"]),
            finish_reason=d["finish_reason"],
            confidence=TraceConfidence(**conf),
            stage=d.get("stage", "final"),
            kept=bool(d.get("kept", True)),
            text=d.get("text"),
            token_confidences=d.get("token_confidences"),
        )


def make_trace(
    text: str,
    token_confidences: Sequence[float],
    finish_reason: str,
    window: int = DEFAULT_WINDOW,
    tail: int = DEFAULT_TAIL,
    keep_text: bool = True,
    keep_confidences: bool = True,
) -> TraceRecord:
    """A TraceRecord from one engine completion (text + its per-token confidences). A trace the
    hook stopped gets no answer: it is excluded from voting whatever its truncated text says."""
    confs = [float(c) for c in token_confidences]
    answer = None if finish_reason == "confidence" else answer_of(text)
    return TraceRecord(
        answer=answer,
        num_tokens=len(confs),
        finish_reason=finish_reason,
        confidence=trace_confidence(confs, window, tail),
        kept=finish_reason != "confidence",
        text=text if keep_text else None,
        token_confidences=confs if keep_confidences else None,
    )


@dataclass
class DeepConfResult:
    """One problem: the chosen answer, every vote, every trace, token totals and the threshold."""

    answer: str | None
    share: float  # the answer's weighted share under `method`
    method: str  # the vote method that picked `answer`
    votes: dict[str, VoteResult]
    traces: list[TraceRecord]
    threshold: float | None  # s (online) or the offline cutoff; None when there was none
    tokens: dict[str, int] = field(default_factory=dict)  # {"warmup", "final", "total"}
    ended_by: str = "budget"  # "budget" | "consensus"
    config: dict = field(default_factory=dict)

    @staticmethod
    def count_tokens(traces: Sequence[TraceRecord]) -> dict[str, int]:
        warm = sum(t.num_tokens for t in traces if t.stage == "warmup")
        final = sum(t.num_tokens for t in traces if t.stage == "final")
        return {"warmup": warm, "final": final, "total": warm + final}

    def to_dict(self, text: bool = False, token_confidences: bool = False) -> dict:
        return {
            "answer": self.answer,
            "share": self.share,
            "method": self.method,
            "votes": {m: v.to_dict() for m, v in self.votes.items()},
            "threshold": _nan_to_none(self.threshold),
            "tokens": dict(self.tokens),
            "ended_by": self.ended_by,
            "config": dict(self.config),
            "traces": [t.to_dict(text, token_confidences) for t in self.traces],
        }

    def to_json(self, text: bool = False, token_confidences: bool = False, **json_kwargs) -> str:
        return json.dumps(self.to_dict(text, token_confidences), **json_kwargs)

    @classmethod
    def from_dict(cls, d: dict) -> DeepConfResult:
        return cls(
            answer=d["answer"],
            share=float(d["share"]),
            method=d["method"],
            votes={m: VoteResult.from_dict(v) for m, v in d["votes"].items()},
            traces=[TraceRecord.from_dict(t) for t in d["traces"]],
            threshold=d.get("threshold"),
            tokens=dict(d.get("tokens", {})),
            ended_by=d.get("ended_by", "budget"),
            config=dict(d.get("config", {})),
        )
