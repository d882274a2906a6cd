"""The generation process of the ``hf-generate`` part: greedy continuation of ``PROMPT`` by an exported
Hugging Face folder's own model code (``trust_remote_code``), its answer written as JSON.

    python -m bench.gpu_check.greedy_generate HF_DIR --device cuda --max_new_tokens 32 --result out.json

A process of its own, so the model loads fresh from the folder; it imports nothing of the training side.
"""

import argparse
import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_DIR = REPO_ROOT / "minimind" / "tokenizer" / "default"
PROMPT = "The model"


def generate_text(hf_dir: Path, device: str, max_new_tokens: int) -> dict:
    """Greedy continuation of ``PROMPT`` by the exported folder's model: the prompt, the text, the number of
    new tokens, the device the model ran on and the class that was loaded."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, trust_remote_code=True).to(device).eval()
    prompt_ids = [tokenizer.bos_token_id, *tokenizer(PROMPT)["input_ids"]]  # documents start with bos in training
    ids = torch.tensor([prompt_ids], device=device)  # (1, prompt tokens)
    with torch.no_grad():
        output = model.generate(ids, do_sample=False, max_new_tokens=max_new_tokens,
                                pad_token_id=tokenizer.pad_token_id)
    new_tokens = output[0, ids.shape[1]:].tolist()
    return {"prompt": PROMPT, "text": tokenizer.decode(new_tokens, skip_special_tokens=True),
            "new_tokens": len(new_tokens), "device": str(next(model.parameters()).device),
            "model_class": f"{type(model).__module__}.{type(model).__name__}"}


def main(argv: list[str] | None = None) -> None:
    """Generate from ``hf_dir`` and write the answer to ``--result``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hf_dir", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    args.result.write_text(json.dumps(generate_text(args.hf_dir, args.device, args.max_new_tokens)))


if __name__ == "__main__":
    main()
