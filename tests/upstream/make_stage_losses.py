"""Record upstream MiniMind's own SFT and DPO training losses on upstream-made weights as test fixtures
(``tests/upstream/stages/reference.safetensors``, ``policy.safetensors`` and ``stage_losses.json``).

Everything comes from e119db8 (the minimind2 family), read from a git clone or mirror of ``jingyaogong/minimind``:
its ``MiniMindForCausalLM`` is built at ``CONFIG`` and given seeded weights (``make_reference.randomize``),
``reference`` and ``policy``, kept in float16 as its trainers save a ``.pth`` (``{key: tensor.half()}``) and
without the tied ``lm_head.weight`` (the embedding's copy); every loss below runs on them loaded back into a
float32 model, as its ``init_model`` loads a ``.pth``. Its ``SFTDataset`` cuts ``make_sft_rows.CONVERSATIONS``
at ``SFT_MAX_LENGTH`` and ``trainer/train_full_sft.py``'s loss lines give the loss of one batch of all those rows
on ``policy``; its ``DPODataset`` cuts ``PAIRS`` at ``DPO_MAX_LENGTH`` and ``trainer/train_dpo.py``'s train loop
(its ``logits_to_log_probs`` and ``dpo_loss`` taken out of the script) gives the loss of one batch of all the
pairs, ``reference`` frozen and ``policy`` trained, with each side's mean log-probability. On the CPU, as here,
upstream's ``autocast_ctx`` is a ``nullcontext``: all of it is float32. The JSON keeps the config, the inputs,
the rows and the figures. ``tests/test_stage_losses_upstream.py`` checks the project's data and loss code
against them. Regenerate with::

    python -m tests.upstream.make_stage_losses --repo /work/.mirror/jingyaogong+minimind/repo
"""

import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tests.upstream import make_sft_rows
from tests.upstream.make_pretrain_rows import dataset_script_start
from tests.upstream.make_reference import MINIMIND2_COMMIT, load_upstream, randomize
from tests.upstream.make_sft_rows import CONVERSATIONS, upstream_functions, write_jsonl

FIXTURES = Path(__file__).resolve().parent / "stages"
TIED = ("lm_head.weight", "model.embed_tokens.weight")  # a copy of the second in upstream's .pth
# Upstream's MiniMindConfig arguments besides the vocabulary (the shipped tokenizer's 6400): its trainers' own
# flags only, so that a run here with --hidden_size 16 --num_hidden_layers 1 builds the same model (8 heads of
# width 2, 2 key/value heads, intermediate 64, dropout 0.0).
CONFIG = {"hidden_size": 16, "num_hidden_layers": 1}
SEEDS = {"reference": 31, "policy": 32}  # independent weights: the policy's log-ratios are far from 0
SFT_MAX_LENGTH = 64  # upstream's max_length (its --max_seq_len): rows of 63 model tokens; two conversations cut
DPO_MAX_LENGTH = 40  # both sides of the second pair cut, and the fourth pair's rejected side
BETA = 0.1  # train_dpo.py's --beta default
PAIRS = [
    *make_sft_rows.PAIRS,
    {"chosen": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}],
     "rejected": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "嗯。"}]},
    {"chosen": [{"role": "system", "content": "Answer with a number."}, {"role": "user", "content": "2*3?"},
                {"role": "assistant", "content": "6"}],
     "rejected": [{"role": "system", "content": "Answer with a number."}, {"role": "user", "content": "2*3?"},
                  {"role": "assistant", "content": "Two times three is five, I think, but let me count again."}]},
]


def upstream_weights(module, config: dict, seed: int) -> dict[str, torch.Tensor]:
    """Seeded weights of upstream's model as its trainers save them: float16, without the tied copy."""
    torch.manual_seed(seed)
    model = module.MiniMindForCausalLM(module.MiniMindConfig(**config)).float()
    randomize(model, seed)
    return {key: value.half().contiguous() for key, value in model.state_dict().items() if key != TIED[0]}


def upstream_model(module, config: dict, state: dict[str, torch.Tensor]) -> nn.Module:
    """Upstream's float32 model with the float16 ``state`` loaded, the tied copy put back (its ``init_model``)."""
    model = module.MiniMindForCausalLM(module.MiniMindConfig(**config))
    model.load_state_dict({**state, TIED[0]: state[TIED[1]]})
    return model


def sft_loss(model: nn.Module, rows: list[tuple[torch.Tensor, ...]]) -> dict[str, float]:
    """train_full_sft.py's loss of one batch of ``rows`` (X, Y, loss_mask, each (max_length - 1,)), its lines as
    written there (``accumulation_steps`` 1, so no division)."""
    X, Y, loss_mask = (torch.stack(column) for column in zip(*rows, strict=True))
    loss_fct = nn.CrossEntropyLoss(reduction="none")
    model.train()
    with torch.no_grad():
        res = model(X)
        loss = loss_fct(
            res.logits.view(-1, res.logits.size(-1)),
            Y.view(-1)
        ).view(Y.size())
        logits_loss = (loss * loss_mask).sum() / loss_mask.sum()
        loss = logits_loss + res.aux_loss
    return {"loss": loss.item(), "logits_loss": logits_loss.item(), "aux_loss": res.aux_loss.item(),
            "targets": int(loss_mask.sum())}


def dpo_step(functions: dict, ref_model: nn.Module, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict:
    """train_dpo.py's loss of one ``batch`` (its collated ``DPODataset`` rows, each (pairs, max_length - 1)), its
    lines as written there, and the mean log-probabilities over the mask that its ``dpo_loss`` compares, per pair
    and side."""
    logits_to_log_probs, dpo_loss = functions["logits_to_log_probs"], functions["dpo_loss"]
    ref_model.eval()
    ref_model.requires_grad_(False)
    model.train()
    x = torch.cat([batch["x_chosen"], batch["x_rejected"]], dim=0)
    y = torch.cat([batch["y_chosen"], batch["y_rejected"]], dim=0)
    mask = torch.cat([batch["mask_chosen"], batch["mask_rejected"]], dim=0)
    with torch.no_grad():
        ref_outputs = ref_model(x)
        ref_logits = ref_outputs.logits
        ref_log_probs = logits_to_log_probs(ref_logits, y)
        outputs = model(x)
        logits = outputs.logits
        policy_log_probs = logits_to_log_probs(logits, y)
        dpo_loss_val = dpo_loss(ref_log_probs, policy_log_probs, mask, beta=BETA)
        loss = dpo_loss_val + outputs.aux_loss
    # dpo_loss's own first lines: each row's mean over its mask
    seq_lengths = mask.sum(dim=1, keepdim=True).clamp_min(1e-8)
    pairs = len(batch["x_chosen"])
    record = {"loss": loss.item(), "dpo_loss": dpo_loss_val.item(), "aux_loss": outputs.aux_loss.item()}
    for name, log_probs in (("policy", policy_log_probs), ("reference", ref_log_probs)):
        means = (log_probs * mask).sum(dim=1) / seq_lengths.squeeze()
        record[f"chosen_{name}"], record[f"rejected_{name}"] = means[:pairs].tolist(), means[pairs:].tolist()
    return record


def main() -> None:
    """Write the weights and the JSON record from the clone given by ``--repo``."""
    repo, tokenizer = dataset_script_start(__doc__.splitlines()[0])
    config = {"vocab_size": len(tokenizer), **CONFIG}
    FIXTURES.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        module = load_upstream(repo, MINIMIND2_COMMIT, Path(folder))
        datasets = load_upstream(repo, MINIMIND2_COMMIT, Path(folder), "dataset/lm_dataset.py")
        models = {}
        for name, seed in SEEDS.items():
            save_file(upstream_weights(module, config, seed), FIXTURES / f"{name}.safetensors")
            models[name] = upstream_model(module, config, load_file(FIXTURES / f"{name}.safetensors"))
        conversations = write_jsonl(Path(folder) / "sft.jsonl", [{"conversations": c} for c in CONVERSATIONS])
        sft = datasets.SFTDataset(conversations, tokenizer, max_length=SFT_MAX_LENGTH)
        sft_rows = [sft[index] for index in range(len(sft))]
        dpo = datasets.DPODataset(write_jsonl(Path(folder) / "dpo.jsonl", PAIRS), tokenizer, max_length=DPO_MAX_LENGTH)
        dpo_rows = [dpo[index] for index in range(len(dpo))]
    functions = upstream_functions(repo, MINIMIND2_COMMIT, "trainer/train_dpo.py", ("logits_to_log_probs", "dpo_loss"))
    batch = {key: torch.stack([row[key] for row in dpo_rows]) for key in dpo_rows[0]}  # the DataLoader's collation
    record = {
        "commit": MINIMIND2_COMMIT, "model_family": "minimind2", "config": config, "tied": list(TIED),
        "seeds": SEEDS, "model_flags": ["--model_family", "minimind2", "--hidden_size", str(CONFIG["hidden_size"]),
                                        "--num_hidden_layers", str(CONFIG["num_hidden_layers"])],
        "sft": {"max_length": SFT_MAX_LENGTH, "weights": "policy", "conversations": CONVERSATIONS,
                "rows": [[tensor.tolist() for tensor in row] for row in sft_rows],
                **sft_loss(models["policy"], sft_rows)},
        "dpo": {"max_length": DPO_MAX_LENGTH, "beta": BETA, "weights": {"policy": "policy", "reference": "reference"},
                "pairs": PAIRS, "rows": [{key: tensor.tolist() for key, tensor in row.items()} for row in dpo_rows],
                **dpo_step(functions, models["reference"], models["policy"], batch)},
    }
    (FIXTURES / "stage_losses.json").write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    for path in sorted(FIXTURES.iterdir()):
        print(f"{path.name}: {path.stat().st_size} bytes")
    print(f"sft loss {record['sft']['loss']:.6f} over {record['sft']['targets']} targets, "
          f"dpo loss {record['dpo']['loss']:.6f}")


if __name__ == "__main__":
    main()
