"""DPO's objective on the training loop's terms: one optimizer step over micro-batches and one evaluation, with
the policy and the frozen reference being upstream-made weights that differ (``tests/upstream/stages``), against
e119db8's figures and a plain recomputation."""

import math
from types import SimpleNamespace

import pytest
import torch

from minimind.data.preferences import SIDES
from minimind.model.preference_loss import dpo_loss, target_log_probs
from minimind.tokenizer import load_tokenizer
from minimind.training import stage_run
from minimind.training.arguments import parse_args, run_config
from minimind.training.evaluation.validation_loss import evaluate
from minimind.training.loop.preference_objective import PreferenceLoss
from minimind.training.run.reference_model import reference_ds_config
from minimind.training.stages import DPO as DPO_STAGE
from tests.plain_engine import PlainEngine
from tests.test_stage_losses_upstream import RECORD, fixture_model, preference_batch

DPO = RECORD["dpo"]


@pytest.fixture
def models(tmp_path):
    """The policy (training mode) and the frozen reference (evaluation mode) of the fixture."""
    policy = fixture_model(DPO["weights"]["policy"], tmp_path).train()
    reference = fixture_model(DPO["weights"]["reference"], tmp_path).eval().requires_grad_(False)
    return policy, reference


def test_one_step_over_two_micro_batches_logs_the_mean_loss_and_rewards_of_every_pair(models, tmp_path):
    """Two micro-batches of two pairs: the step's loss is the mean over all four pairs, e119db8's loss of one
    batch of them; its rewards are the means of beta * (policy - reference) upstream's figures give, and the
    gradient is that of the mean of the micro-batch losses (the engine's accumulation)."""
    policy, reference = models
    batch = preference_batch(tmp_path, load_tokenizer())
    halves = [{key: value[part] for key, value in batch.items()} for part in (slice(0, 2), slice(2, 4))]
    result = PreferenceLoss(reference, DPO["beta"]).train_step(PlainEngine(policy), halves, torch.device("cpu"))
    assert result.loss == pytest.approx(DPO["loss"], rel=1e-6)
    rewards = fixture_rewards()
    extra = result.extra
    assert extra["reward_chosen"] == pytest.approx(sum(rewards["chosen"]) / 4, abs=1e-6)
    assert extra["reward_rejected"] == pytest.approx(sum(rewards["rejected"]) / 4, abs=1e-6)
    assert extra["reward_margin"] == pytest.approx(extra["reward_chosen"] - extra["reward_rejected"], abs=1e-12)
    assert extra["reward_accuracy"] == preferred_share(rewards) and not result.stop
    accumulated = {name: param.grad.clone() for name, param in policy.named_parameters()}
    policy.zero_grad()
    (sum(plain_loss(policy, reference, half) for half in halves)).backward()  # each half's mean, both added
    for name, param in policy.named_parameters():
        torch.testing.assert_close(accumulated[name], param.grad, rtol=1e-5, atol=1e-8)


def fixture_rewards() -> dict[str, list[float]]:
    """Each pair's implicit rewards, beta * (policy - reference), from upstream's recorded log-probabilities."""
    return {side: [DPO["beta"] * (p - r) for p, r in zip(DPO[f"{side}_policy"], DPO[f"{side}_reference"],
                                                         strict=True)] for side in SIDES}


def preferred_share(rewards: dict[str, list[float]]) -> float:
    """The share of pairs whose chosen answer has the higher reward, a tie counting half."""
    chosen, rejected = rewards["chosen"], rewards["rejected"]
    return sum((c > r) + 0.5 * (c == r) for c, r in zip(chosen, rejected, strict=True)) / len(chosen)


def plain_loss(policy, reference, batch) -> torch.Tensor:
    """e119db8's micro-batch loss, recomputed by hand: dpo_loss + aux over chosen rows then rejected rows."""
    input_ids = torch.cat([batch[f"{side}_input_ids"] for side in SIDES])
    targets = torch.cat([batch[f"{side}_targets"] for side in SIDES])
    with torch.no_grad():
        reference_log_probs, _ = target_log_probs(reference(input_ids).logits, targets)
    output = policy(input_ids)
    policy_log_probs, mask = target_log_probs(output.logits, targets)
    return dpo_loss(policy_log_probs, reference_log_probs, mask, DPO["beta"]).loss + output.aux_loss


class Pairs(torch.utils.data.Dataset):
    """The fixture's pairs as an evaluation set, with the blank pair that pads a last batch."""

    def __init__(self, batch: dict[str, torch.Tensor]):
        self.batch = batch

    def __len__(self) -> int:
        return len(self.batch["chosen_input_ids"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[index] for key, value in self.batch.items()}

    def blank(self) -> dict[str, torch.Tensor]:
        return {key: torch.full_like(value[0], 0 if key.endswith("input_ids") else -100)
                for key, value in self.batch.items()}


@pytest.mark.parametrize("micro_batch", [1, 3, 4])
def test_an_evaluation_counts_every_pair_once_and_no_blank_pair(models, tmp_path, micro_batch):
    """Micro-batches of 3 leave two blank pairs in the last batch: they add nothing (a blank pair's DPO loss would
    be ln 2); the loss, rewards and accuracy are the means over the four real pairs whatever the batch."""
    policy, reference = models
    batch = preference_batch(tmp_path, load_tokenizer())
    result = evaluate(PlainEngine(policy), Pairs(batch), PreferenceLoss(reference, DPO["beta"]),
                      micro_batch=micro_batch, max_batches=0, rank=0, world=1, device=torch.device("cpu"))
    with torch.no_grad():
        expected = plain_loss(policy.eval(), reference, batch).item()
    assert result.val_loss == pytest.approx(expected, rel=1e-6)
    assert result.val_loss == pytest.approx(DPO["loss"], rel=1e-6)  # dropout 0: as in training mode
    assert result.val_loss != pytest.approx(math.log(2))
    assert not result.perplexity and "val_ppl" not in result.figures()
    assert result.eval_tokens == sum(int((batch[f"{side}_targets"] != -100).sum()) for side in SIDES)
    assert result.extra["val_reward_accuracy"] == preferred_share(fixture_rewards())


def test_the_reference_engine_keeps_zero3_and_nothing_of_training():
    """The reference's DeepSpeed config: no optimizer, schedule, clipping, monitor or profiler; ZeRO-3 kept (its
    parameters partitioned, offloaded where the policy's are) without the optimizer offload; any other stage 0;
    the precision the policy's."""
    policy = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "bf16": {"enabled": True},
              "optimizer": {"type": "AdamW"}, "scheduler": {"type": "WarmupLR"}, "gradient_clipping": 1.0,
              "tensorboard": {"enabled": True}, "wandb": {"enabled": True}, "flops_profiler": {"enabled": True}}
    zero2 = reference_ds_config({**policy, "zero_optimization": {"stage": 2, "overlap_comm": True}})
    assert zero2 == {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "bf16": {"enabled": True},
                     "zero_optimization": {"stage": 0}}
    zero3 = reference_ds_config({**policy, "zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"},
                                                                 "offload_optimizer": {"device": "cpu"}}})
    assert zero3["zero_optimization"] == {"stage": 3, "offload_param": {"device": "cpu"}}


@pytest.mark.parametrize("family, mean, beta", [("minimind2", True, 0.1), ("minimind3", False, 0.15)])
def test_dpo_takes_its_familys_sequence_log_probability_and_beta(monkeypatch, family, mean, beta):
    """e119db8's trainer (minimind2) averages a sequence's token log-probabilities with beta 0.1; today's
    (minimind3) sums them with beta 0.15."""
    monkeypatch.setattr(stage_run, "reference_engine", lambda config, inputs: "reference")
    config = run_config(parse_args(["--model_family", family], DPO_STAGE), cpu_only=False, stage=DPO_STAGE)
    inputs = SimpleNamespace(model_config=SimpleNamespace(model_family=family))
    objective = stage_run.stage_objective(config, inputs)
    assert (objective.reference, objective.mean_over_tokens, objective.beta) == ("reference", mean, beta)

