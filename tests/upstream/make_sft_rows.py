"""Record upstream MiniMind's own SFT and DPO rows and DPO loss as test fixtures (``tests/upstream/sft_rows.json``,
``tests/upstream/dpo_loss.safetensors``).

At e119db8 (the minimind2 family): ``dataset/lm_dataset.py``'s ``SFTDataset`` and ``DPODataset`` run on
``CONVERSATIONS`` and ``PAIRS`` with the project's shipped tokenizer (read as ``make_pretrain_rows`` reads it,
through a stand-in ``datasets`` module), and ``trainer/train_dpo.py``'s ``logits_to_log_probs`` and ``dpo_loss``
(taken out of the script, which cannot be imported outside upstream's tree) on seeded logits. The fixture keeps
the inputs, every row (X, Y, loss mask) and the loss, and the chat template of e119db8's tokenizer config.
``tests/test_data_conversations.py`` and ``tests/test_preference_loss.py`` check the project against them.
Regenerate with::

    python -m tests.upstream.make_sft_rows --repo /path/to/minimind.git
"""

import ast
import json
import subprocess
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from tests.upstream.make_pretrain_rows import dataset_script_start
from tests.upstream.make_reference import load_upstream

FOLDER = Path(__file__).resolve().parent
ROWS_FIXTURE = FOLDER / "sft_rows.json"
LOSS_FIXTURE = FOLDER / "dpo_loss.safetensors"
COMMIT = "e119db8"
SFT_MAX_LENGTH = 320  # MiniMind's max_length: tokens per row (the project's max_seq_len + 1)
DPO_MAX_LENGTH = 48
TOOLS = [{"name": "get_weather", "description": "Weather of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello, how can I help?"}],
    [{"role": "system", "content": "You answer in one word."},
     {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."},
     {"role": "user", "content": "And of Italy?"}, {"role": "assistant", "content": "Rome."}],
    [{"role": "system", "content": "你是一个有用的助手。", "functions": TOOLS},
     {"role": "user", "content": "What's the weather in Paris?"},
     {"role": "assistant",
      "content": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'},
     {"role": "tool", "content": '{"temp": 21}'},
     {"role": "assistant", "content": "It is 21 degrees in Paris."}],
    [{"role": "user", "content": "讲一个很长的故事。"},
     {"role": "assistant", "content": "从前有一座山，山里有一座庙，庙里有一个老和尚在给小和尚讲故事。" * 12}],
    [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"},
     {"role": "user", "content": "Why?"}, {"role": "assistant", "content": "One plus one makes two."}],
]
PAIRS = [
    {"chosen": [{"role": "user", "content": "Is the sky blue?"}, {"role": "assistant", "content": "Yes, by day."}],
     "rejected": [{"role": "user", "content": "Is the sky blue?"}, {"role": "assistant", "content": "No."}]},
    {"chosen": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "Goodbye, take care!"}],
     "rejected": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"},
                  {"role": "assistant", "content": "Whatever. " * 20}]},
]
LOSS_SHAPE = {"pairs": 3, "seq": 7, "vocab": 13}
BETA = 0.1


def upstream_functions(repo: Path, commit: str, path: str, names: tuple[str, ...]) -> dict:
    """The top-level functions ``names`` of upstream's ``path`` at ``commit``, compiled alone (with ``torch`` and
    ``F`` in scope), so that a script whose imports need upstream's tree still lends its functions."""
    source = subprocess.run(["git", "-C", str(repo), "show", f"{commit}:{path}"],
                            check=True, capture_output=True, text=True).stdout
    body = [node for node in ast.parse(source).body if isinstance(node, ast.FunctionDef) and node.name in names]
    namespace = {"torch": torch, "F": F}
    exec(compile(ast.Module(body=body, type_ignores=[]), f"{commit}:{path}", "exec"), namespace)
    return {name: namespace[name] for name in names}


def write_jsonl(path: Path, records: list[dict]) -> str:
    """Write ``records`` as JSON Lines; returns the path as a string."""
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")
    return str(path)


def dpo_loss_inputs() -> dict[str, torch.Tensor]:
    """Seeded logits of a policy and a reference model, targets and a loss mask (one row with an empty mask)."""
    generator = torch.Generator().manual_seed(28)
    rows, seq, vocab = 2 * LOSS_SHAPE["pairs"], LOSS_SHAPE["seq"], LOSS_SHAPE["vocab"]
    mask = (torch.rand(rows, seq, generator=generator) < 0.6).long()
    mask[-1] = 0
    return {"policy_logits": torch.randn(rows, seq, vocab, generator=generator),
            "reference_logits": torch.randn(rows, seq, vocab, generator=generator),
            "y": torch.randint(0, vocab, (rows, seq), generator=generator), "mask": mask}


def main() -> None:
    """Write both fixtures from the clone given by ``--repo``."""
    repo, tokenizer = dataset_script_start(__doc__.splitlines()[0])
    config = subprocess.run(["git", "-C", str(repo), "show", f"{COMMIT}:model/tokenizer_config.json"],
                            check=True, capture_output=True, text=True).stdout
    fixture = {"commit": COMMIT, "chat_template": json.loads(config)["chat_template"],
               "sft_max_length": SFT_MAX_LENGTH, "conversations": CONVERSATIONS,
               "dpo_max_length": DPO_MAX_LENGTH, "pairs": PAIRS}
    with tempfile.TemporaryDirectory() as folder:
        module = load_upstream(repo, COMMIT, Path(folder), "dataset/lm_dataset.py")
        sft = module.SFTDataset(write_jsonl(Path(folder) / "sft.jsonl", [{"conversations": c} for c in CONVERSATIONS]),
                                tokenizer, max_length=SFT_MAX_LENGTH)
        fixture["sft_rows"] = [[tensor.tolist() for tensor in sft[index]] for index in range(len(sft))]
        dpo = module.DPODataset(write_jsonl(Path(folder) / "dpo.jsonl", PAIRS), tokenizer, max_length=DPO_MAX_LENGTH)
        fixture["dpo_rows"] = [{key: tensor.tolist() for key, tensor in dpo[index].items()}
                               for index in range(len(dpo))]
    ROWS_FIXTURE.write_text(json.dumps(fixture, ensure_ascii=False) + "\n", encoding="utf-8")
    upstream = upstream_functions(repo, COMMIT, "trainer/train_dpo.py", ("logits_to_log_probs", "dpo_loss"))
    tensors = dpo_loss_inputs()
    log_probs = {name: upstream["logits_to_log_probs"](tensors[f"{name}_logits"], tensors["y"])
                 for name in ("policy", "reference")}
    tensors["loss"] = upstream["dpo_loss"](log_probs["reference"], log_probs["policy"], tensors["mask"], beta=BETA)
    tensors["beta"] = torch.tensor(BETA)
    save_file(tensors, str(LOSS_FIXTURE))
    for path in (ROWS_FIXTURE, LOSS_FIXTURE):
        print(f"{path.name}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
