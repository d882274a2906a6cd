"""Record upstream MiniMind's own SFT and DPO rows and DPO loss as test fixtures (``tests/upstream/sft_rows.json``,
``tests/upstream/sft_rows_minimind3.json``, ``tests/upstream/dpo_loss.safetensors``).

At e119db8 (the minimind2 family): ``dataset/lm_dataset.py``'s ``SFTDataset`` and ``DPODataset`` run on
``CONVERSATIONS`` and ``PAIRS`` with the project's shipped tokenizer (read as ``make_pretrain_rows`` reads it,
through a stand-in ``datasets`` module), and ``trainer/train_dpo.py``'s ``logits_to_log_probs`` and ``dpo_loss``
(taken out of the script, which cannot be imported outside upstream's tree) on seeded logits. The fixture keeps
the inputs, every row (X, Y, loss mask) and the loss, and the chat template of e119db8's tokenizer config.

At d65ef2c (the minimind3 family): its ``SFTDataset`` and ``DPODataset`` on the same conversations in its input
format (``minimind3_turns``: tools as a system turn's ``tools``, JSON text) and on ``MINIMIND3_CONVERSATIONS``
and ``MINIMIND3_PAIRS``, which use its own fields, with the shipped tokenizer carrying d65ef2c's chat template (as
its own tokenizer does, and as the project renders minimind3 rows). Upstream draws its random choices from
Python's global ``random``: before each row is read, that generator is put in the state of the project's
``conversation_random(seed, index)``, for each of ``SEEDS``, so the rows show both outcomes of every choice.
Its ``train_dpo.py``'s ``dpo_loss``, which sums each sequence's token log-probabilities where e119db8's takes
their mean, on the same seeded logits (``loss_minimind3``).

``tests/test_data_conversations.py``, ``tests/test_data_preferences.py`` and ``tests/test_preference_loss.py``
check the project against them. Regenerate with::

    python -m tests.upstream.make_sft_rows --repo /path/to/minimind.git
"""

import ast
import json
import random
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from minimind.data.minimind3_chat import conversation_random
from minimind.tokenizer import load_tokenizer
from tests.upstream.make_pretrain_rows import dataset_script_start
from tests.upstream.make_reference import load_upstream

FOLDER = Path(__file__).resolve().parent
ROWS_FIXTURE = FOLDER / "sft_rows.json"
MINIMIND3_ROWS_FIXTURE = FOLDER / "sft_rows_minimind3.json"
LOSS_FIXTURE = FOLDER / "dpo_loss.safetensors"
COMMIT = "e119db8"
MINIMIND3_COMMIT = "d65ef2c"
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
MINIMIND3_CONVERSATIONS = [  # d65ef2c's own fields: reasoning, a think block in the content, tool calls as JSON text
    [{"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4", "reasoning_content": "Two and two make four."}],
    [{"role": "system", "content": "Think first."}, {"role": "user", "content": "Largest planet?"},
     {"role": "assistant", "content": "<think>\nGas giants are big.\n</think>\n\nJupiter."}],
    [{"role": "system", "content": "", "tools": json.dumps(TOOLS)}, {"role": "user", "content": "Weather in Rome?"},
     {"role": "assistant", "content": "",
      "tool_calls": json.dumps([{"name": "get_weather", "arguments": {"city": "Rome"}}])},
     {"role": "tool", "content": '{"temp": 25}'}, {"role": "assistant", "content": "25 degrees."}],
]
MINIMIND3_PAIRS = [
    {"chosen": [{"role": "user", "content": "3*3?"},
                {"role": "assistant", "content": "9", "reasoning_content": "Three threes are nine."}],
     "rejected": [{"role": "user", "content": "3*3?"}, {"role": "assistant", "content": "6"}]},
]
SEEDS = list(range(6))  # the readers' seeds the minimind3 rows are recorded for
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


def minimind3_turns(conversation: list[dict]) -> list[dict]:
    """A conversation in d65ef2c's input format: a system turn's ``functions`` become its ``tools``, JSON text."""
    return [{"role": turn["role"], "content": turn["content"], "tools": json.dumps(turn["functions"])}
            if "functions" in turn else turn for turn in conversation]


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


def upstream_chat_template(repo: Path, commit: str) -> str:
    """The chat template of upstream's tokenizer config at ``commit``."""
    config = subprocess.run(["git", "-C", str(repo), "show", f"{commit}:model/tokenizer_config.json"],
                            check=True, capture_output=True, text=True).stdout
    return json.loads(config)["chat_template"]


def row_lists(row) -> list | dict:
    """One row of upstream's datasets (a tuple of tensors, or a dict of them) as lists."""
    return {key: tensor.tolist() for key, tensor in row.items()} if isinstance(row, dict) else \
        [tensor.tolist() for tensor in row]


def seeded_rows(dataset, seed: int) -> list:
    """Every row of upstream's ``dataset``, each read with Python's global ``random`` in the state of
    ``conversation_random(seed, index)``, as lists."""
    rows = []
    for index in range(len(dataset)):
        random.setstate(conversation_random(seed, index).getstate())
        rows.append(row_lists(dataset[index]))
    return rows


def upstream_rows(repo: Path, commit: str, tokenizer, conversations: list, pairs: list,
                  read: Callable[[object], list]) -> tuple[list, list]:
    """``read``'s rows of upstream's ``SFTDataset`` over ``conversations`` and ``DPODataset`` over ``pairs`` at
    ``commit`` (``SFT_MAX_LENGTH``, ``DPO_MAX_LENGTH``)."""
    with tempfile.TemporaryDirectory() as folder:
        module = load_upstream(repo, commit, Path(folder), "dataset/lm_dataset.py")
        sft = module.SFTDataset(write_jsonl(Path(folder) / "sft.jsonl", [{"conversations": c} for c in conversations]),
                                tokenizer, max_length=SFT_MAX_LENGTH)
        dpo = module.DPODataset(write_jsonl(Path(folder) / "dpo.jsonl", pairs), tokenizer, max_length=DPO_MAX_LENGTH)
        return read(sft), read(dpo)


def record_minimind3_rows(repo: Path) -> None:
    """Write d65ef2c's SFT and DPO rows for each of SEEDS (the module docstring says how)."""
    tokenizer = load_tokenizer(None)
    tokenizer.chat_template = upstream_chat_template(repo, MINIMIND3_COMMIT)
    conversations = [minimind3_turns(conversation) for conversation in CONVERSATIONS] + MINIMIND3_CONVERSATIONS
    pairs = PAIRS + MINIMIND3_PAIRS
    fixture = {"commit": MINIMIND3_COMMIT, "chat_template": tokenizer.chat_template, "seeds": SEEDS,
               "sft_max_length": SFT_MAX_LENGTH, "conversations": conversations,
               "dpo_max_length": DPO_MAX_LENGTH, "pairs": pairs}
    fixture["sft_rows"], fixture["dpo_rows"] = upstream_rows(
        repo, MINIMIND3_COMMIT, tokenizer, conversations, pairs,
        lambda dataset: [seeded_rows(dataset, seed) for seed in SEEDS])
    MINIMIND3_ROWS_FIXTURE.write_text(json.dumps(fixture, ensure_ascii=False) + "\n", encoding="utf-8")


def main() -> None:
    """Write the fixtures from the clone given by ``--repo``."""
    repo, tokenizer = dataset_script_start(__doc__.splitlines()[0])
    fixture = {"commit": COMMIT, "chat_template": upstream_chat_template(repo, COMMIT),
               "sft_max_length": SFT_MAX_LENGTH, "conversations": CONVERSATIONS,
               "dpo_max_length": DPO_MAX_LENGTH, "pairs": PAIRS}
    fixture["sft_rows"], fixture["dpo_rows"] = upstream_rows(
        repo, COMMIT, tokenizer, CONVERSATIONS, PAIRS,
        lambda dataset: [row_lists(dataset[index]) for index in range(len(dataset))])
    ROWS_FIXTURE.write_text(json.dumps(fixture, ensure_ascii=False) + "\n", encoding="utf-8")
    upstream = upstream_functions(repo, COMMIT, "trainer/train_dpo.py", ("logits_to_log_probs", "dpo_loss"))
    tensors = dpo_loss_inputs()
    log_probs = {name: upstream["logits_to_log_probs"](tensors[f"{name}_logits"], tensors["y"])
                 for name in ("policy", "reference")}
    tensors["loss"] = upstream["dpo_loss"](log_probs["reference"], log_probs["policy"], tensors["mask"], beta=BETA)
    tensors["beta"] = torch.tensor(BETA)
    today = upstream_functions(repo, MINIMIND3_COMMIT, "trainer/train_dpo.py", ("logits_to_log_probs", "dpo_loss"))
    today_log_probs = {name: today["logits_to_log_probs"](tensors[f"{name}_logits"], tensors["y"])
                       for name in ("policy", "reference")}  # d65ef2c sums each sequence's tokens
    tensors["loss_minimind3"] = today["dpo_loss"](today_log_probs["reference"], today_log_probs["policy"],
                                                  tensors["mask"], beta=BETA)
    save_file(tensors, str(LOSS_FIXTURE))
    record_minimind3_rows(repo)
    for path in (ROWS_FIXTURE, MINIMIND3_ROWS_FIXTURE, LOSS_FIXTURE):
        print(f"{path.name}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
