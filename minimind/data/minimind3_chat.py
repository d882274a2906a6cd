"""Conversations as text the way today's MiniMind (d65ef2c, the minimind3 family) writes them for SFT and DPO.

Its ``SFTDataset`` takes tools from a system turn's ``tools`` and an assistant turn's calls from its
``tool_calls`` (JSON text, or lists as they are), where e119db8 took a first system turn's ``functions``; an
assistant turn's ``reasoning_content`` fills its think block. First its ``pre_processing_chat`` puts one of
``SYSTEM_PROMPTS`` before one conversation in five of those with no system turn and no tools (its
``DPODataset`` does not). Both render with the family's chat template (``minimind3_chat_template``, whatever the
tokenizer's own), then ``post_processing_chat`` drops every empty think block from four texts in five that have
one, each side of a pair drawing for itself.

Upstream draws from Python's global ``random`` whenever a sample is read, so a conversation's text changes with
the epoch and the data loader's worker. Here each conversation, or pair, draws once, with upstream's calls in
upstream's order, from a generator of its own (``conversation_random(seed, index)``): its row is the same
wherever and whenever it is read, and upstream's code in the same generator state makes the same choices.
"""

import json
import random
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from minimind.data.jsonl_reader import DataError
from minimind.tokenizer import minimind3_chat_template

SYSTEM_PROMPTS = (  # pre_processing_chat's, in its order (random.choice picks by position)
    "你是一个知识丰富的AI，尽力为用户提供准确的信息。",
    "你是minimind，一个小巧但有用的语言模型。",
    "你是一个专业的AI助手，请提供有价值的回答。",
    "你是minimind，请尽力帮助用户解决问题。",
    "你是一个可靠的AI，请给出准确的回答。",
    "You are a helpful AI assistant.",
    "You are minimind, a lightweight intelligent assistant.",
    "You are a friendly chatbot. Please answer the user's questions carefully.",
    "You are a knowledgeable AI. Try your best to provide accurate information.",
    "You are minimind, a small but useful language model.",
)
ADD_SYSTEM_RATIO = 0.2  # pre_processing_chat's add_system_ratio
EMPTY_THINK = "<think>\n\n</think>\n\n"  # the template's think block of an assistant turn without reasoning
EMPTY_THINK_RATIO = 0.2  # post_processing_chat's empty_think_ratio: the share of texts that keep theirs
TURN_FIELDS = {"tools": "system", "tool_calls": "assistant", "reasoning_content": "assistant"}  # field: its role


def conversation_random(seed: int, index: int) -> random.Random:
    """The generator that conversation (or pair) ``index`` of a file draws its random choices from, for the
    reader's ``seed``."""
    return random.Random(f"{seed}:{index}")


def decoded(value: str | list) -> list:
    """A ``tools`` or ``tool_calls`` field as the template takes it: JSON text decoded, a list as it is."""
    return json.loads(value) if isinstance(value, str) else value


def check_turn_fields(messages: list[dict], field: str, path: str | Path, line: int) -> None:
    """Raise a DataError unless the turns' minimind3 fields are where and what d65ef2c reads: ``tools`` on a system
    turn and ``tool_calls`` on an assistant turn (each a list, or JSON text of one; empty ones are ignored, as
    upstream ignores them), ``reasoning_content`` (a string) on an assistant turn, and no ``functions``."""
    for number, turn in enumerate(messages, start=1):
        where = f'"{field}" turn {number}'
        if "functions" in turn:
            raise DataError(path, line, f'{where} has "functions", the minimind2 rows\' tools; minimind3 rows take '
                                        'a system turn\'s "tools"')
        for name, role in TURN_FIELDS.items():
            value = turn.get(name)
            if value is None or (name != "reasoning_content" and not value):
                continue
            if turn["role"] != role:
                raise DataError(path, line, f'{where}: "{name}" belongs to a {role} turn, not a {turn["role"]} one')
            if name == "reasoning_content":
                if not isinstance(value, str):
                    raise DataError(path, line, f'{where}: "reasoning_content" is not a string')
                continue
            try:
                listed = isinstance(value, str | list) and isinstance(decoded(value), list)
            except json.JSONDecodeError:
                listed = False
            if not listed:
                raise DataError(path, line, f'{where}: "{name}" is not a list or the JSON text of one')


def with_random_system(messages: list[dict], draws: random.Random) -> list[dict]:
    """``pre_processing_chat``: the turns, with one of SYSTEM_PROMPTS first in one conversation in five of those
    without tools whose first turn is not the system's."""
    if any(turn.get("tools") for turn in messages):
        return messages
    if messages[0]["role"] != "system" and draws.random() < ADD_SYSTEM_RATIO:
        return [{"role": "system", "content": draws.choice(SYSTEM_PROMPTS)}, *messages]
    return messages


def without_empty_think(text: str, draws: random.Random) -> str:
    """``post_processing_chat``: ``text`` without its empty think blocks, in four texts in five that have one."""
    if EMPTY_THINK in text and draws.random() > EMPTY_THINK_RATIO:
        return text.replace(EMPTY_THINK, "")
    return text


def rendered(tokenizer: PreTrainedTokenizerFast, messages: list[dict], tools: list | None) -> str:
    """The turns' text by the minimind3 chat template, with ``tools`` (None: none) and each ``tool_calls`` given
    as JSON text decoded (``create_chat_prompt``)."""
    turns = [{**turn, "tool_calls": decoded(turn["tool_calls"])} if turn.get("tool_calls") else turn
             for turn in messages]
    return tokenizer.apply_chat_template(turns, tools=tools, chat_template=minimind3_chat_template(),
                                         tokenize=False, add_generation_prompt=False)


def sft_text(tokenizer: PreTrainedTokenizerFast, messages: list[dict], draws: random.Random) -> str:
    """A conversation's text as d65ef2c's ``SFTDataset`` writes it (``create_chat_prompt`` between the pre- and
    post-processing; the last system turn with ``tools`` gives them), its random choices drawn from ``draws``."""
    messages = with_random_system(messages, draws)
    tools = None
    for turn in messages:
        if turn["role"] == "system" and turn.get("tools"):
            tools = decoded(turn["tools"])
    return without_empty_think(rendered(tokenizer, messages, tools), draws)


def dpo_text(tokenizer: PreTrainedTokenizerFast, messages: list[dict], draws: random.Random) -> str:
    """One side of a pair as d65ef2c's ``DPODataset`` writes it: without tools, then ``post_processing_chat``
    drawing from ``draws`` (the chosen side first, as upstream). Its ``tool_calls`` given as JSON text are decoded
    as SFT decodes them: upstream passes the text on, which its template cannot render (a TypeError)."""
    return without_empty_think(rendered(tokenizer, messages, None), draws)
