"""Continue a prompt with a trained model, or chat with a fine-tuned one, printing the text as it is generated.

    python -m minimind.generate out --prompt "The capital of France is"
    python -m minimind.generate out/checkpoints/step_200 --prompt "..." --temperature 0 --max_new_tokens 64
    echo "Once upon a time" | python -m minimind.generate out/pretrain_512.pth --prompt -
    python -m minimind.generate out/hf --prompt "..." --top_k 40 --seed 1
    python -m minimind.generate out/full_sft_512.pth --chat --system "Answer briefly."
    python -m minimind.generate out/full_sft_512.pth --chat --prompt "What is 2 + 2?" --temperature 0

PATH is a training run's save folder (its ``checkpoints/``), a checkpoint folder (with
``latest`` or ``latest_universal``), one tag folder (ZeRO or universal), a MiniMind ``.pth``
(sized by a ``config.json`` beside it, else by the size flags) or a Hugging Face folder
(``config.json`` + ``model.safetensors``). A checkpoint is verified against its manifest and
read weights-only, as ``python -m minimind.checkpoint`` does; DeepSpeed is imported only then.

The prompt is encoded as pretraining documents start, ``[bos] + text`` (``--prompt -`` reads it
from stdin, its trailing newlines dropped); stdout gets the prompt, then the continuation as it
is produced, then a newline. Prompt and new tokens together stay within the model's
``max_position_embeddings`` (``--max_new_tokens`` is lowered to fit, with a note on stderr).
Bad input (a path, a flag, a prompt, a tokenizer other than the checkpoint's) is one line on
stderr and exit status 2.

``--chat`` talks to a model fine-tuned on conversations (the SFT stage) through its tokenizer's chat
template (MiniMind's ChatML; a tokenizer without one is bad input): each line of stdin is a user turn
(``> `` on stderr when stdin is a terminal), rendered after the turns so far (``--system``'s first)
with the assistant's turn opened. The answer ends at the tokenizer's eos (``<|im_end|>``), goes to
stdout as it comes, then a newline, and joins the conversation. When the conversation and
``--max_new_tokens`` no longer fit the context, its oldest exchanges are dropped (a note on stderr);
a turn too long on its own is refused in one line, the conversation goes on, and the exit status
is then 2. An empty line or the end of stdin ends it. ``--chat --prompt TEXT`` answers the one user
turn TEXT (``-``: all of stdin) and ends.
"""

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from minimind.checkpoint.errors import CheckpointError
from minimind.checkpoint.hf_architecture import NATIVE_CLASS_OF_MODEL_TYPE, minimind_model
from minimind.errors import ConfigError, UserInputError, first_line
from minimind.flags import POSITIVE, SEED, FlagParser, number_at_least
from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.model.config import MODEL_FAMILIES
from minimind.model.generation import (
    chat_history_that_fits,
    generate_tokens,
    new_tokens_that_fit,
    prompt_token_ids,
)
from minimind.model.precision import PRECISION_DTYPES
from minimind.model.pth_weights import WeightsMismatchError, load_minimind_pth
from minimind.tokenizer.chat_templates import family_chat_template
from minimind.tokenizer.loader import load_tokenizer, require_chat_template, tokenizer_fingerprint

# A bare .pth's architecture and sizes; MiniMindConfig's defaults otherwise.
SIZE_FLAGS = ("model_family", "hidden_size", "num_hidden_layers", "use_moe")
HF_CONFIG = "config.json"
SAVE_DIR_CHECKPOINTS = "checkpoints"  # where a training run's save folder keeps its checkpoints
FINGERPRINT_SHOWN = 12  # hex digits of a tokenizer fingerprint shown in an error


class GenerationInputError(UserInputError):
    """A model path, tokenizer or prompt that generation cannot use; the message is one line."""


@dataclass
class LoadedModel:
    """A model ready to generate (fp32, CPU, eval mode), its tokenizer, and a few words on each's origin."""

    model: MiniMindForCausalLM
    tokenizer: PreTrainedTokenizerFast
    model_source: str
    tokenizer_source: str


def device_flag(text: str) -> torch.device:
    """An argparse ``type``: a torch device name (``cpu``, ``cuda``, ``cuda:1``)."""
    try:
        return torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The path and flags; a bad flag is a one-line ``ConfigError``."""
    parser = FlagParser(prog="python -m minimind.generate", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="save folder, checkpoint folder or tag, MiniMind .pth, or Hugging Face folder")
    parser.add_argument("--prompt", default=None,
                        help="text to continue (with --chat: the one user turn to answer); '-' reads it from stdin")
    parser.add_argument("--chat", action="store_true",
                        help="chat with a fine-tuned model through its tokenizer's chat template: one user turn per "
                             "line of stdin, until an empty line or its end")
    parser.add_argument("--system", default=None, help="with --chat: a system turn opening the conversation")
    parser.add_argument("--max_new_tokens", type=POSITIVE, default=128, help="tokens to generate at most")
    parser.add_argument("--temperature", type=number_at_least(0, float), default=0.8,
                        help="sampling temperature; 0: greedy (argmax), top_k and top_p unused")
    parser.add_argument("--top_k", type=number_at_least(0), default=0, help="sample among the k most likely; 0: off")
    parser.add_argument("--top_p", type=number_at_least(0, float, maximum=1), default=0.9,
                        help="sample among the most likely tokens holding this probability (nucleus); 1: off")
    parser.add_argument("--seed", type=SEED, default=None, help="sampling seed (default: a fresh one each run)")
    parser.add_argument("--tokenizer_path", default=None,
                        help="tokenizer folder (default: the checkpoint's, an HF folder's, else the shipped one)")
    parser.add_argument("--dtype", choices=tuple(PRECISION_DTYPES), default=None,
                        help="precision to run in (default: bf16 on a GPU that has it, else fp32)")
    parser.add_argument("--device", type=device_flag, default=None, help="default: cuda if available, else cpu")
    sizes = parser.add_argument_group("sizes of a .pth without config.json beside it (MiniMind's defaults)")
    sizes.add_argument("--model_family", choices=MODEL_FAMILIES, default=None, help="architecture (minimind2)")
    sizes.add_argument("--hidden_size", type=POSITIVE, default=None, help="model width (512; minimind3: 768)")
    sizes.add_argument("--num_hidden_layers", type=POSITIVE, default=None, help="number of blocks (8)")
    sizes.add_argument("--use_moe", type=int, choices=(0, 1), default=None, help="1: MoE MLPs (0)")
    parser.add_argument("--trust_checkpoint", action="store_true",
                        help="unpickle a checkpoint without the weights-only check (runs code from it)")
    args = parser.parse_args(argv)
    if args.prompt is None and not args.chat:
        parser.error("--prompt is required (or --chat, to chat)")
    if args.system is not None and not args.chat:
        parser.error("--system applies only with --chat")
    return args


def main(argv: list[str] | None = None) -> int:
    """Continue a prompt, or chat (``--chat``); bad input is one line on stderr and exit status 2 (Ctrl-C: 130)."""
    try:
        args = parse_args(argv)
        device = args.device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA devices")
        text = None if args.prompt is None else read_prompt(args.prompt)
        loaded = load_model(args)
        loaded.model.select_kernels("auto")  # the kernels that run on this device, whatever the training used
        chat = ChatSession(loaded, args.system, args.max_new_tokens) if args.chat else None
        if text is None:
            prompt = None
        else:
            prompt = chat.prompt_for(text) if chat else checked_prompt(text, loaded)
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_status
    try:
        decoder = Decoder.ready(loaded, args, device)
        if prompt is None:
            return converse(chat, decoder, user_turns(sys.stdin))
        decoder.stream(prompt, echo="" if chat else text)
    except KeyboardInterrupt:
        print(file=sys.stdout)
        return 130
    return 0


@dataclass
class Decoder:
    """The model on its device and in its precision, its tokenizer and the sampling settings: writes what it
    generates after a prompt to stdout as it comes."""

    model: MiniMindForCausalLM
    tokenizer: PreTrainedTokenizerFast
    device: torch.device
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    generator: torch.Generator

    @classmethod
    def ready(cls, loaded: LoadedModel, args: argparse.Namespace, device: torch.device) -> "Decoder":
        """Move the model to ``device`` in ``--dtype`` (or the device's default), say what runs on stderr, and
        seed the sampling (``--seed``, else a fresh seed)."""
        precision = args.dtype or default_precision(device)
        model = loaded.model.to(device=device, dtype=PRECISION_DTYPES[precision])
        parameters = sum(p.numel() for p in model.parameters())
        print(f"{loaded.model_source}: {parameters / 1e6:.2f}M parameters, {precision} on {device}; "
              f"tokenizer: {loaded.tokenizer_source}", file=sys.stderr)
        generator = torch.Generator()  # sampling runs on the CPU: a seed gives the same draws on any device
        if args.seed is None:
            generator.seed()
        else:
            generator.manual_seed(args.seed)
        return cls(model, loaded.tokenizer, device, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                   generator)

    def stream(self, prompt: list[int], echo: str = "") -> str:
        """Write ``echo`` (the prompt's text, when continuing it), then the text generated after ``prompt`` as it
        comes, then a newline, to stdout; how fast it ran (and a note when ``max_new_tokens`` is lowered to fit
        the context) to stderr. Returns the generated text, special tokens (eos) left out."""
        budget = new_tokens_that_fit(self.model, len(prompt), self.max_new_tokens)
        if budget < self.max_new_tokens:
            print(f"note: at most {budget} new tokens: the model's context is "
                  f"{self.model.config.max_position_embeddings} positions and the prompt takes {len(prompt)}",
                  file=sys.stderr)
        stream = TextStream(self.tokenizer, sys.stdout)
        sys.stdout.write(echo)
        started = time.perf_counter()
        new_ids = generate_tokens(self.model, prompt, budget, device=self.device, temperature=self.temperature,
                                  top_k=self.top_k, top_p=self.top_p, generator=self.generator,
                                  eos_token_id=self.tokenizer.eos_token_id, on_token=stream.add)
        seconds = time.perf_counter() - started
        stream.finish()
        print(f"{len(new_ids)} tokens in {seconds:.2f} s ({len(new_ids) / max(seconds, 1e-9):.1f} tokens/s)",
              file=sys.stderr)
        return stream.decoded()


class ChatSession:
    """A conversation with a fine-tuned model: its turns so far (a system turn first when given), rendered by
    its family's chat template (minimind2: the tokenizer's; minimind3: MiniMind's today), and trimmed to leave
    ``max_new_tokens`` of the model's context free."""

    def __init__(self, loaded: LoadedModel, system: str | None, max_new_tokens: int):
        self.template = family_chat_template(loaded.model.config.model_family)
        if self.template is None:
            require_chat_template(loaded.tokenizer)
        self.tokenizer = loaded.tokenizer
        self.config = loaded.model.config
        self.max_new_tokens = max_new_tokens
        self.messages: list[dict] = [] if system is None else [{"role": "system", "content": system}]

    def prompt_for(self, text: str) -> list[int]:
        """The prompt ids that ask for the answer to the user turn ``text`` after the turns so far, whose oldest
        exchanges are dropped for good (a note on stderr) until prompt and ``max_new_tokens`` fit the context.
        A turn that does not fit on its own is refused in one line, the conversation left as it was."""
        turns = [*self.messages, {"role": "user", "content": text}]
        max_positions = self.config.max_position_embeddings
        messages, prompt = chat_history_that_fits(self.tokenizer, turns, max_positions, self.max_new_tokens,
                                                  self.template)
        require_known_ids(prompt, self.config)
        if len(prompt) >= max_positions:
            raise GenerationInputError(f"the turn takes {len(prompt)} tokens in the chat template, and the model's "
                                       f"context (max_position_embeddings) is {max_positions}: shorten it")
        if len(messages) < len(turns):
            print(f"note: dropped the {len(turns) - len(messages)} oldest turns: with them the prompt and "
                  f"--max_new_tokens {self.max_new_tokens} exceed the model's context of {max_positions} positions",
                  file=sys.stderr)
        self.messages = messages
        return prompt

    def add_answer(self, text: str) -> None:
        """Record the assistant's answer to the last user turn."""
        self.messages.append({"role": "assistant", "content": text})


def converse(chat: ChatSession, decoder: Decoder, turns: Iterable[str]) -> int:
    """Answer each user turn of ``turns`` after the conversation so far; a turn that cannot fit the context is
    refused in one line on stderr and the conversation goes on. The exit status: 0, or 2 after a refused turn."""
    status = 0
    for text in turns:
        try:
            prompt = chat.prompt_for(text)
        except GenerationInputError as error:
            print(f"error: {error}", file=sys.stderr)
            status = error.exit_status
            continue
        chat.add_answer(decoder.stream(prompt))
    return status


def user_turns(lines: TextIO) -> Iterator[str]:
    """The user's turns, one per line of ``lines``, until an empty (or blank) line or the end; ``> `` on stderr
    before each when ``lines`` is a terminal."""
    interactive = lines.isatty()
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = lines.readline()
        if interactive and not line:
            print(file=sys.stderr)  # the end (Ctrl-D) echoes no newline after the prompt
        if not line.strip():
            return
        yield line.rstrip("\r\n")


def default_precision(device: torch.device) -> str:
    """bf16 on a CUDA device that computes in it, else fp32."""
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def read_prompt(flag: str) -> str:
    """The ``--prompt`` text (``-``: stdin, trailing newlines dropped); an empty prompt is refused."""
    text = sys.stdin.read().rstrip("\r\n") if flag == "-" else flag
    if not text:
        raise GenerationInputError("the prompt is empty" + (" (nothing on stdin)" if flag == "-" else ""))
    return text


def checked_prompt(text: str, loaded: LoadedModel) -> list[int]:
    """The prompt's token ids, refused in one line when they do not fit the model (ids past its
    vocabulary, more tokens than its context)."""
    prompt = prompt_token_ids(loaded.tokenizer, text)
    config = loaded.model.config
    require_known_ids(prompt, config)
    if len(prompt) >= config.max_position_embeddings:
        raise GenerationInputError(f"the prompt is {len(prompt)} tokens with bos, and the model's context "
                                   f"(max_position_embeddings) is {config.max_position_embeddings}: shorten it")
    return prompt


def require_known_ids(prompt: list[int], config: MiniMindConfig) -> None:
    """Refuse, in one line, a prompt with token ids past the model's vocabulary (a tokenizer not the model's)."""
    if max(prompt) >= config.vocab_size:
        raise GenerationInputError(f"the prompt encodes to token id {max(prompt)}, past the model's vocab_size "
                                   f"{config.vocab_size}: pass the tokenizer it was trained with (--tokenizer_path)")


class TextStream:
    """Writes a growing list of token ids as text: the whole list is decoded each time and the new
    suffix written, so a character whose bytes span several tokens prints once it is complete."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast, out: TextIO):
        self.tokenizer = tokenizer
        self.out = out
        self.ids: list[int] = []
        self.written = ""

    def add(self, token_id: int) -> None:
        """Take one new token; write what it completes."""
        self.ids.append(token_id)
        # an incomplete UTF-8 character decodes to U+FFFD until its last byte's token arrives
        self.write_upto(self.decoded().rstrip("\ufffd"))

    def finish(self) -> None:
        """Write the rest (a character left incomplete included) and end the line."""
        self.write_upto(self.decoded())
        self.out.write("\n")
        self.out.flush()

    def decoded(self) -> str:
        """All the ids so far as text, special tokens left out."""
        return self.tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def write_upto(self, text: str) -> None:
        """Write what ``text`` adds to what is written (nothing when it does not extend it)."""
        if text.startswith(self.written) and len(text) > len(self.written):
            self.out.write(text[len(self.written):])
            self.out.flush()
            self.written = text


def load_model(args: argparse.Namespace) -> LoadedModel:
    """The model and tokenizer ``args.path`` names: a ``.pth``, a Hugging Face folder or a checkpoint."""
    path = Path(args.path)
    if not path.exists():
        raise GenerationInputError(f"{path}: no such file or folder")
    size_flags = {name: getattr(args, name) for name in SIZE_FLAGS if getattr(args, name) is not None}
    if path.is_file():
        return load_pth(path, size_flags, args.tokenizer_path)
    if size_flags:
        raise ConfigError(f"--{', --'.join(size_flags)}: size flags apply only to a .pth without {HF_CONFIG} "
                          f"beside it; {path} records its sizes")
    if (path / HF_CONFIG).is_file():
        return load_hf_folder(path, args.tokenizer_path)
    return load_checkpoint(path, args.tokenizer_path, args.trust_checkpoint)


def read_config_values(path: Path) -> dict:
    """The JSON object in a Hugging Face ``config.json``."""
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise GenerationInputError(f"{path}: unreadable ({first_line(error)})") from None
    if not isinstance(values, dict):
        raise GenerationInputError(f"{path}: not a MiniMind config (a JSON {type(values).__name__})")
    return values


def read_config_json(path: Path) -> MiniMindConfig:
    """A ``MiniMindConfig`` from a Hugging Face ``config.json``; another model type is refused."""
    values = read_config_values(path)
    if values.get("model_type", MiniMindConfig.model_type) != MiniMindConfig.model_type:
        raise GenerationInputError(f"{path}: not a MiniMind config (model_type {values.get('model_type')!r})")
    return MiniMindConfig.from_dict(values)


def hf_folder_class(path: Path) -> type[PreTrainedModel]:
    """The class that loads the Hugging Face folder ``path``: this project's for its custom-code export, the
    built-in one for a native export; another model type is refused."""
    model_type = read_config_values(path / HF_CONFIG).get("model_type")
    if model_type in NATIVE_CLASS_OF_MODEL_TYPE:
        return NATIVE_CLASS_OF_MODEL_TYPE[model_type]
    read_config_json(path / HF_CONFIG)
    return MiniMindForCausalLM


def load_pth(path: Path, size_flags: dict, tokenizer_path: str | None) -> LoadedModel:
    """MiniMind's ``.pth``, sized by the ``config.json`` beside it or by the size flags (MiniMind's defaults)."""
    config_file = path.parent / HF_CONFIG
    if config_file.is_file():
        if size_flags:
            raise ConfigError(f"--{', --'.join(size_flags)}: {path} has {config_file} beside it, which sets the "
                              "sizes; drop the size flags")
        config, sized_by = read_config_json(config_file), str(config_file)
    else:
        config = MiniMindConfig(**{name: bool(value) if name == "use_moe" else value
                                   for name, value in size_flags.items()})
        values = {name: getattr(config, name) for name in SIZE_FLAGS}
        sized_by = " ".join(f"--{name} {int(value) if isinstance(value, bool) else value}"
                            for name, value in values.items())
    try:
        model = load_minimind_pth(MiniMindForCausalLM(config), path)
    except WeightsMismatchError as error:
        raise WeightsMismatchError(f"{error} (model sized by {sized_by})") from None
    tokenizer, tokenizer_source = chosen_tokenizer(tokenizer_path)
    return LoadedModel(model.eval(), tokenizer, f"{path} (sized by {sized_by})", tokenizer_source)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Within this block ``transformers`` shows no progress bars or load reports (errors still show)."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_hf_folder(path: Path, tokenizer_path: str | None) -> LoadedModel:
    """A Hugging Face folder of a MiniMind model, loaded by this project's own model class (no remote code
    runs): a native export (Qwen3, Qwen3-MoE, Llama) is loaded by transformers' class and its weights moved
    into this project's model. Weights that do not fit its config.json exactly are refused."""
    model_class = hf_folder_class(path)
    try:
        with quiet_transformers():
            model, info = model_class.from_pretrained(path, dtype=torch.float32, output_loading_info=True,
                                                      ignore_mismatched_sizes=True)  # reported below
    except (OSError, ValueError) as error:
        raise GenerationInputError(f"{path}: cannot load it as a Hugging Face model ({first_line(error)})") from None
    missing, unexpected, mismatched = (sorted(info[f"{kind}_keys"]) for kind in ("missing", "unexpected", "mismatched"))
    problems = [f"missing keys {missing[:3]}"] if missing else []
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:3]}")
    if mismatched:
        key, saved, built = mismatched[0]
        problems.append(f"{key} has shape {tuple(saved)}, the config makes {tuple(built)}")
    if problems:
        raise WeightsMismatchError(f"{path}: weights do not fit its {HF_CONFIG}: {'; '.join(problems)}")
    if model_class is not MiniMindForCausalLM:
        try:
            model = minimind_model(model)
        except CheckpointError as error:
            raise GenerationInputError(f"{path}: {error}") from None
    if tokenizer_path is None and (path / "tokenizer.json").is_file():
        tokenizer_path = str(path)
    tokenizer, tokenizer_source = chosen_tokenizer(tokenizer_path)
    return LoadedModel(model.eval(), tokenizer, str(path), tokenizer_source)


def chosen_tokenizer(tokenizer_path: str | None) -> tuple[PreTrainedTokenizerFast, str]:
    """The tokenizer in ``tokenizer_path`` (None: the shipped one) and how to name it."""
    return load_tokenizer(tokenizer_path), tokenizer_path or "the shipped default"


def load_checkpoint(path: Path, tokenizer_path: str | None, trusted: bool) -> LoadedModel:
    """The fp32 weights of a training checkpoint (a save folder, a checkpoint folder or a tag), after its
    files verify against its manifest, with the tokenizer it was trained with."""
    from minimind.checkpoint.export import load_checkpoint_model  # DeepSpeed: imported for checkpoints only
    from minimind.checkpoint.integrity import TagKind, describe_verdict, require_intact
    from minimind.checkpoint.locate import LATEST_NAMES, MODEL_STATES, locate_checkpoint, read_client_state
    from minimind.checkpoint.manifest import MANIFEST_NAME
    from minimind.checkpoint.safe_load import checkpoint_loading

    if (path / SAVE_DIR_CHECKPOINTS).is_dir():
        root = path / SAVE_DIR_CHECKPOINTS
    elif any((path / name).exists() for name in (*LATEST_NAMES, MODEL_STATES, MANIFEST_NAME)):
        root = path
    else:
        raise GenerationInputError(
            f"{path}: not a model: neither a MiniMind .pth file, a Hugging Face folder ({HF_CONFIG}), a training "
            f"run's save folder ({SAVE_DIR_CHECKPOINTS}/), a checkpoint folder ({LATEST_NAMES[0]}) nor a "
            f"checkpoint tag ({MODEL_STATES})"
        )
    with checkpoint_loading(trusted=trusted):
        location = locate_checkpoint(root)
        verdict = require_intact(location)
        client_state = read_client_state(location)
        tokenizer, tokenizer_source = checkpoint_tokenizer(location.tag_dir, client_state, tokenizer_path)
        model, _ = load_checkpoint_model(location)
    if verdict.kind is TagKind.PRE_MANIFEST:
        print(f"warning: {describe_verdict(location.tag_dir, verdict, checksums=True)}", file=sys.stderr)
    return LoadedModel(model, tokenizer, str(location.tag_dir), tokenizer_source)


def checkpoint_tokenizer(tag_dir: Path, client_state: dict, tokenizer_path: str | None,
                         ) -> tuple[PreTrainedTokenizerFast, str]:
    """``tokenizer_path``, else the tokenizer the checkpoint's run was given (``--tokenizer_path``, or the
    shipped one), refused in one line when it is not the one whose fingerprint the checkpoint recorded."""
    recorded = (client_state.get("args") or {}).get("tokenizer_path")
    if tokenizer_path is None and recorded is not None and not Path(recorded).is_dir():
        raise GenerationInputError(f"{tag_dir}: it was trained with the tokenizer in {recorded}, which is not "
                                   "there; pass that tokenizer with --tokenizer_path")
    tokenizer, source = chosen_tokenizer(tokenizer_path if tokenizer_path is not None else recorded)
    saved = client_state.get("tokenizer_fingerprint")
    found = tokenizer_fingerprint(tokenizer)
    if saved is not None and found != saved:
        trained_with = recorded or "the shipped default"
        raise GenerationInputError(
            f"tokenizer {source} (fingerprint {found[:FINGERPRINT_SHOWN]}) is not the one {tag_dir} was trained "
            f"with ({trained_with}, fingerprint {saved[:FINGERPRINT_SHOWN]}); pass that one with --tokenizer_path"
        )
    return tokenizer, source


if __name__ == "__main__":
    sys.exit(main())
