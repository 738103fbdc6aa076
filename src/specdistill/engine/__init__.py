"""The draft / verify / decide engine: speculative decoding and SKD-style interleaved sampling as one loop.

    generate(student, s_ids, s_mask, teacher, t_ids, t_mask, Decoding(policy=TopKPolicy(k=25), gamma=LupiGamma(4)))
    sample(model, ids, mask, sampling=Sampling(temperature=1.0))

See docs/engine.md.
"""

from .loop import BlockDecoder, Decoding, commit, draft_block, generate, pick_token, sample, verify_block
from .output import FINISH_REASONS, Generation, GenerationStats
from .policies import (
    POLICIES,
    AdaptiveTopKPolicy,
    Block,
    GreedyPolicy,
    SpeculativePolicy,
    TopKPolicy,
    Verdict,
    make_policy,
    settle,
)
from .sampling import GREEDY, Sampling, sample_tokens, uniforms, warp_logits
from .schedules import SCHEDULES, ConstantGamma, HeuristicGamma, LupiGamma, make_schedule
from .stopping import Stopping, make_stopping

__all__ = [
    "AdaptiveTopKPolicy",
    "Block",
    "BlockDecoder",
    "ConstantGamma",
    "Decoding",
    "FINISH_REASONS",
    "GREEDY",
    "Generation",
    "GenerationStats",
    "GreedyPolicy",
    "HeuristicGamma",
    "LupiGamma",
    "POLICIES",
    "SCHEDULES",
    "Sampling",
    "SpeculativePolicy",
    "Stopping",
    "TopKPolicy",
    "Verdict",
    "commit",
    "draft_block",
    "generate",
    "make_policy",
    "make_schedule",
    "make_stopping",
    "pick_token",
    "sample",
    "sample_tokens",
    "settle",
    "uniforms",
    "verify_block",
    "warp_logits",
]
