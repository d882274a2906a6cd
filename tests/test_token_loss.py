"""One label convention: training batches carry shifted ``targets``; the model's ``labels`` keep
Hugging Face's meaning (unshifted); both reach the same token loss."""

import pytest
import torch

from minimind import MiniMindConfig, MiniMindForCausalLM
from minimind.data import IGNORE_INDEX, PackedWindows
from minimind.training.loop.objective import train_step
from tests.plain_engine import PlainEngine


@pytest.mark.parametrize("seq_len, tokens", [(16, 16 * 17 * 3), (13, 200)])  # whole windows, a padded tail
def test_the_model_s_loss_on_labels_equals_the_loop_s_loss_on_targets(seq_len, tokens):
    torch.manual_seed(0)
    model = MiniMindForCausalLM(MiniMindConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                               num_key_value_heads=2, vocab_size=300))
    stream = torch.randint(3, 300, (tokens,)).numpy()
    windows = PackedWindows(stream, seq_len, pad_id=0)
    samples = [windows[i] for i in range(len(windows))]
    batch = {key: torch.stack([sample[key] for sample in samples]) for key in ("input_ids", "targets")}
    # the same windows as Hugging Face labels: the whole window, unshifted, padding masked
    window_tokens = torch.cat([batch["input_ids"], batch["targets"][:, -1:].clamp(min=0)], dim=1)
    labels = torch.cat([batch["input_ids"][:, :1], batch["targets"]], dim=1)
    assert (labels == IGNORE_INDEX).any() == (tokens % (seq_len + 1) != 0)
    expected = model(window_tokens, labels=labels).loss
    result = train_step(PlainEngine(model), [batch], torch.device("cpu"))
    assert result.target_tokens == int((batch["targets"] != IGNORE_INDEX).sum())
    assert result.loss == pytest.approx(expected.item(), rel=1e-6)
    # both against a float64 negative log-likelihood written here, not the project's loss function
    with torch.no_grad():
        log_probs = model(batch["input_ids"]).logits.double().log_softmax(-1)  # (batch, seq, vocab)
    kept = batch["targets"] != IGNORE_INDEX
    nll = -log_probs.gather(-1, batch["targets"].clamp(min=0)[..., None])[..., 0]
    assert result.loss == pytest.approx(nll[kept].mean().item(), rel=1e-5)


def test_labels_are_shifted_by_the_model_and_targets_are_not():
    """Passing a training batch's targets as labels would drop a position: the names differ on purpose."""
    windows = PackedWindows(torch.arange(3, 3 + 34).numpy(), 16, pad_id=0)
    sample = windows[0]
    assert torch.equal(sample["targets"][:-1], sample["input_ids"][1:])  # targets[t] is the next token
