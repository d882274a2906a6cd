"""Record weights made by upstream MiniMind's own code, and their loss, for a run that starts from them
(``tests/upstream/start/minimind3.safetensors`` and ``minimind3.json``).

Upstream's minimind3 ``MiniMindForCausalLM`` (d65ef2c) is built at the size the command line below asks
for and given seeded weights (``make_reference.randomize``); its state dict is kept in float16, as upstream's
trainer saves its ``.pth`` (``{key: tensor.half()}``), without the tied ``lm_head.weight`` (the embedding's
copy: the test writes the ``.pth`` back with it). ``TEXTS`` are cut into this project's packed windows (its
token cache and ``PackedWindows``), and upstream's forward gives the loss of one batch of all of them, with labels as
upstream's trainer passes them: what the first optimizer step of the run here must log.
``tests/test_minimind_flags.py`` starts that run with ``--from_weight``. Regenerate with::

    python -m tests.upstream.make_start_weights --repo /path/to/minimind.git
"""

import argparse
import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from minimind.data import IGNORE_INDEX, PackedWindows, build_or_load_token_cache
from minimind.tokenizer.loader import load_tokenizer
from tests.upstream.make_reference import MINIMIND3_COMMIT, load_upstream, randomize

FIXTURES = Path(__file__).resolve().parent / "start"
TIED = ("lm_head.weight", "model.embed_tokens.weight")  # a copy of the second in upstream's .pth
HIDDEN, LAYERS, MAX_SEQ_LEN = 32, 1, 16  # --hidden_size, --num_hidden_layers, --max_seq_len of the run
TEXTS = [
    "The cat sat on the mat, and the dog slept by the door.",
    "Return the number of vowels in a string.",
    "一段中文文本，用来检查从上游权重开始的训练。",
    "Seven small birds sang in the old oak tree at dawn.",
]


def main() -> None:
    """Write the ``.pth`` and the run's texts, flags and expected first loss from the clone given by ``--repo``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="git clone or mirror of jingyaogong/minimind")
    args = parser.parse_args()
    tokenizer = load_tokenizer(None)
    with tempfile.TemporaryDirectory() as folder:
        module = load_upstream(args.repo, MINIMIND3_COMMIT, Path(folder))
        torch.manual_seed(0)
        config = module.MiniMindConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, vocab_size=len(tokenizer))
        model = module.MiniMindForCausalLM(config).float()
        randomize(model, seed=11)
        corpus = Path(folder) / "corpus.jsonl"
        corpus.write_text("".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in TEXTS),
                          encoding="utf-8")
        cache = build_or_load_token_cache(corpus, tokenizer, cache_dir=Path(folder) / "cache", show_progress=False,
                                          log=lambda line: None)
        windows = PackedWindows(cache.tokens, MAX_SEQ_LEN)
        samples = [windows[index] for index in range(len(windows))]
        # upstream shifts inside the model: labels[1:] are the targets, input position L + 1 is not scored
        input_ids = torch.stack([torch.cat([s["input_ids"], s["input_ids"][-1:]]) for s in samples])
        labels = torch.stack([torch.cat([torch.tensor([IGNORE_INDEX]), s["targets"]]) for s in samples])
        model.train()
        with torch.no_grad():
            loss = model(input_ids, labels=labels).loss
    state = {key: value.half().contiguous() for key, value in model.state_dict().items() if key != TIED[0]}
    save_file(state, FIXTURES / "minimind3.safetensors")
    record = {"commit": MINIMIND3_COMMIT, "tied": list(TIED), "texts": TEXTS, "windows": len(windows),
              "flags": ["--model_family", "minimind3", "--hidden_size", str(HIDDEN), "--num_hidden_layers",
                        str(LAYERS), "--max_seq_len", str(MAX_SEQ_LEN), "--batch_size", str(len(windows)),
                        "--accumulation_steps", "1"],
              "upstream_loss": loss.item()}
    (FIXTURES / "minimind3.json").write_text(json.dumps(record, ensure_ascii=False, indent=1) + "\n",
                                             encoding="utf-8")
    print(f"minimind3.safetensors: {(FIXTURES / 'minimind3.safetensors').stat().st_size} bytes, "
          f"{len(windows)} windows, upstream loss {loss.item():.6f}")


if __name__ == "__main__":
    main()
