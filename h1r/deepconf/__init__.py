"""DeepConf (Deep Think with Confidence): confidence metrics, voting, online early stopping."""

from h1r.deepconf.confidence import (
    SlidingGroupConfidence,
    TraceConfidence,
    group_confidences,
    token_confidence,
    token_confidences,
    trace_confidence,
)
from h1r.deepconf.online import (
    ConfidenceStop,
    KEEP_TOP_PERCENT,
    ConfidenceStopHook,
    confidence_threshold,
    consensus_reached,
    make_stop_hook,
    replay_online,
    should_continue,
    stop_point,
)
from h1r.deepconf.result import DeepConfResult, TraceRecord, make_trace
from h1r.deepconf.run import DeepConfConfig, pool_generator, run_deepconf
from h1r.deepconf.voting import (
    VOTE_METHODS,
    AnswerGroups,
    VoteResult,
    answer_of,
    group_answers,
    offline_deepconf,
    vote,
    vote_all,
)

__all__ = [
    "SlidingGroupConfidence", "TraceConfidence", "group_confidences", "token_confidence", "token_confidences",
    "trace_confidence", "ConfidenceStop", "ConfidenceStopHook", "confidence_threshold", "consensus_reached",
    "make_stop_hook", "replay_online", "should_continue", "stop_point", "DeepConfResult", "TraceRecord",
    "make_trace", "DeepConfConfig", "pool_generator", "run_deepconf", "VOTE_METHODS", "VoteResult",
    "group_answers", "offline_deepconf", "vote", "vote_all", "AnswerGroups", "answer_of", "KEEP_TOP_PERCENT",
]
