"""Sample generations while training: continuations of fixed prompts, decoded greedily; in the fine-tuning
stages, the model's answers to fixed questions put through the tokenizer's chat template.

Every rank decodes every prompt, the same fixed number of forward passes each (ZeRO-3 and
AutoEP run collectives inside the forward); rank 0 records the text. The decode loop is
``minimind.model.generation``'s, the one ``python -m minimind.generate`` uses.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast

from minimind.data.default_conversations import CHAT_PROMPTS
from minimind.data.default_corpus import SAMPLE_PROMPTS
from minimind.errors import ConfigError
from minimind.model.generation import chat_prompt_ids, generate_tokens, prompt_token_ids
from minimind.tokenizer.chat_templates import family_chat_template


@dataclass(frozen=True)
class ChatStyle:
    """Samples of a fine-tuned model: questions as user turns in its ``family``'s chat template."""

    family: str  # minimind2 | minimind3


def sample_prompt_ids(tokenizer: PreTrainedTokenizerFast, prompt: str, chat: ChatStyle | None) -> list[int]:
    """A prompt's token ids: a document's start, or (``chat``) a user turn and the assistant's opening in the
    chat template of the style's model family."""
    if chat is not None:
        return chat_prompt_ids(tokenizer, [{"role": "user", "content": prompt}], family_chat_template(chat.family))
    return prompt_token_ids(tokenizer, prompt)


def read_sample_prompts(spec: str, tokenizer: PreTrainedTokenizerFast, max_positions: int,
                        chat: ChatStyle | None = None) -> list[str]:
    """``--sample_prompts``: ``default`` (openings in the bundled corpus's style; ``chat``: questions in the
    bundled conversations' style), ``none``, or a file of one prompt a line (blank lines and repeats skipped). A
    missing, unreadable or empty file, or a prompt of ``max_positions`` tokens or more (no room to continue it),
    is a one-line ``ConfigError``."""
    if spec in ("default", "none"):
        return list(CHAT_PROMPTS if chat is not None else SAMPLE_PROMPTS) if spec == "default" else []
    path = Path(spec)
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"--sample_prompts {spec}: cannot read it ({type(error).__name__}: {error})") from None
    prompts = list(dict.fromkeys(line for line in lines if line))
    if not prompts:
        raise ConfigError(f"--sample_prompts {spec}: the file holds no prompt (one a line)")
    for prompt in prompts:
        length = len(sample_prompt_ids(tokenizer, prompt, chat))
        if length >= max_positions:
            raise ConfigError(f"--sample_prompts {spec}:{lines.index(prompt) + 1}: the prompt is {length} tokens, "
                              f"the model holds {max_positions} positions")
    return prompts


class SampleGenerator:
    """Greedy continuations of ``prompts`` by the engine's model, ``max_new_tokens`` each (cut at eos); ``chat``:
    the answers to them as user turns, through the chat template."""

    def __init__(self, engine, tokenizer: PreTrainedTokenizerFast, prompts: list[str], max_new_tokens: int,
                 device: torch.device, chat: ChatStyle | None = None):
        self.engine = engine
        self.tokenizer = tokenizer
        self.prompts = [(prompt, sample_prompt_ids(tokenizer, prompt, chat)) for prompt in prompts]
        self.max_new_tokens = max_new_tokens
        self.device = device

    def generate(self) -> list[dict]:
        """``{"prompt", "text"}`` per prompt; the model is in eval mode during and in train mode after."""
        eos = self.tokenizer.eos_token_id
        rows = []
        self.engine.eval()
        try:
            for prompt, ids in self.prompts:
                new = generate_tokens(self.engine, ids, self.max_new_tokens, device=self.device,
                                      eos_token_id=eos, stop_at_eos=False)
                if eos in new:
                    new = new[:new.index(eos)]
                rows.append({"prompt": prompt, "text": self.tokenizer.decode(new, skip_special_tokens=True)})
        finally:
            self.engine.train()
        return rows
