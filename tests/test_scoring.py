"""Response alignment against a brute-force reference, top-1 agreement on hand-made logits, and eval mode restored
even when scoring fails."""

import pytest
import torch
from transformers import LlamaForCausalLM

from conftest import tiny_config
from specdistill.data.tokenizer import build_tokenizer
from specdistill.data.prompt_views import left_pad, right_pad
from specdistill.evaluate.metrics import response_nll
from specdistill.evaluate.quality import generate_ids
from specdistill.scoring import eval_mode, response_logits, top1_agreements

TOK = build_tokenizer()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_config("llama", len(TOK) + 3)).eval()  # 3 padded embedding rows


@torch.no_grad()
def test_response_logits_are_the_predictions_from_each_prefix(model):
    """Logits for response token j == the last logits of the model run on prompt + response[:j] alone (no
    padding, no batch): the first response token is predicted from the prompt, the last prediction is dropped."""
    prompts, responses = [[5, 9, 11, 4], [7, 3]], [[20, 21, 22], [30]]
    p_ids, p_mask = left_pad(prompts, TOK.pad_token_id)
    r_ids, r_mask = right_pad(responses, TOK.pad_token_id)
    ids, mask = torch.cat([p_ids, r_ids], 1), torch.cat([p_mask, r_mask], 1)
    vocab = len(TOK)
    got = response_logits(model, ids, mask, r_ids.shape[1], vocab)  # [B, T, V]
    assert got.shape == (2, 3, vocab)
    for b, (prompt, response) in enumerate(zip(prompts, responses)):
        for j in range(len(response)):
            alone = model(torch.tensor([prompt + response[:j]])).logits[0, -1, :vocab]
            torch.testing.assert_close(got[b, j], alone, rtol=1e-4, atol=1e-4)


class AllPositions(torch.nn.Module):
    """A causal LM whose forward takes `logits_to_keep` and ignores it, returning the logits of every position (as
    remote code may): scoring must still pick the positions that predict the response."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0, **kwargs):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)


@torch.no_grad()
def test_a_forward_that_ignores_logits_to_keep_gives_the_same_response_logits(model):
    from specdistill.engine.prefix import shared_prefix

    g = torch.Generator().manual_seed(3)
    head = torch.randint(5, len(TOK), (20,), generator=g).tolist()  # a prefix every row shares (>= 16 ids)
    prompts = [head + [7, 8, 9], head + [4], head + [6, 5]]
    responses = [[20, 21, 22, 23], [30, 31], [40]]
    p_ids, p_mask = left_pad(prompts, TOK.pad_token_id)
    r_ids, r_mask = right_pad(responses, TOK.pad_token_id)
    ids, mask = torch.cat([p_ids, r_ids], 1), torch.cat([p_mask, r_mask], 1)
    vocab, T = len(TOK), r_ids.shape[1]
    whole = AllPositions(model)
    assert model(input_ids=ids, logits_to_keep=T + 1).logits.shape[1] == T + 1  # the real model trims...
    assert whole(input_ids=ids, logits_to_keep=T + 1).logits.shape[1] == ids.shape[1]  # ...the wrapper does not
    want = response_logits(model, ids, mask, T, vocab)
    torch.testing.assert_close(response_logits(whole, ids, mask, T, vocab), want, rtol=0, atol=1e-5)
    prefix = shared_prefix(model, p_ids, p_mask)
    assert prefix is not None and prefix.length == 20
    got = response_logits(whole, ids, mask, T, vocab, prefix=prefix)
    torch.testing.assert_close(got[r_mask], want[r_mask], rtol=0, atol=1e-5)


class Failing(torch.nn.Module):
    """A model whose forward raises, to check that callers restore its training mode."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, *args, **kwargs):
        raise RuntimeError("forward failed")


@pytest.mark.parametrize("call", [
    lambda m: generate_ids(m, TOK, [[5, 6]], max_new_tokens=2),
    lambda m: response_nll(m, [[5, 6]], [[7]], TOK.pad_token_id, len(TOK)),
], ids=["generate_ids", "response_nll"])
def test_training_mode_is_restored_when_scoring_raises(call):
    model = Failing().train()
    with pytest.raises(RuntimeError, match="forward failed"):
        call(model)
    assert model.training


def test_eval_mode_restores_the_previous_mode():
    model = Failing()
    for before in (True, False):
        model.train(before)
        with pytest.raises(KeyError):
            with eval_mode(model):
                assert not model.training
                raise KeyError("inside")
        assert model.training is before


def test_top1_agreements_count_the_masked_positions_whose_argmaxes_match():
    """A stub pair's logits written by hand, [2, 3, 3]: argmaxes match at 4 positions, one of them masked out (a
    padded position), so the count is 3. A tie goes to the lower id, as greedy decoding's argmax does."""
    student = torch.tensor([[[3.0, 1, 0], [0, 2, 1], [1, 0, 5]],
                            [[0.0, 0, 1], [9, 0, 0], [0, 7, 0]]])  # argmax [[0, 1, 2], [2, 0, 1]]
    teacher = torch.tensor([[[2.0, 2, 0], [0, 4, 3], [6, 0, 1]],
                            [[0.0, 3, 1], [1, 0, 0], [0, 5, 2]]])  # argmax [[0 (tie), 1, 0], [1, 0, 1]]
    mask = torch.tensor([[True, True, True], [True, True, False]])
    assert int(top1_agreements(student, teacher, mask)) == 3
    assert int(top1_agreements(student, student, mask)) == int(mask.sum())
