"""Exporting a training checkpoint as MiniMind ``.pth`` weights or a standalone Hugging Face folder.

A Hugging Face folder holds a built-in ``transformers`` architecture where one computes the
model exactly, else the bundled MiniMind code (``hf_architecture``).

The fp32 master weights are reassembled from the ZeRO shards by DeepSpeed's own
``zero_to_fp32`` (or read whole from a universal checkpoint's per-parameter files), put
into the project's ``MiniMindForCausalLM`` built from the recorded ``model_config`` (strict
keys and shapes), then written in the requested format and dtype.

Expert-parallel (AutoEP) checkpoints, which ``zero_to_fp32`` cannot consolidate, are
converted to universal in a temporary folder first (a universal one is read as is); their
fused expert tensors and router are renamed to MiniMind's per-expert keys by
``minimind_expert_keys``, the mapping training uses for its ``.pth``.
"""

import contextlib
import io
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GenerationConfig

from minimind.checkpoint.autoep_names import minimind_expert_keys
from minimind.checkpoint.errors import CheckpointError
from minimind.checkpoint.hf_architecture import HfArchitecture, choose_hf_architecture, native_model
from minimind.checkpoint.locate import CheckpointLocation, model_config_dict, read_client_state
from minimind.checkpoint.standalone_code import MODULE_FILE, standalone_modeling_source
from minimind.errors import first_line
from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.model.precision import PRECISION_DTYPES
from minimind.model.pth_weights import minimind_weights_name, save_minimind_state, state_dict_mismatch
from minimind.tokenizer.chat_templates import family_chat_template
from minimind.tokenizer.loader import load_tokenizer, tokenizer_folder

TIED_KEY, TIED_SOURCE = "lm_head.weight", "model.embed_tokens.weight"


def consolidated_fp32_state(location: CheckpointLocation, client_state: dict) -> dict[str, torch.Tensor]:
    """Full fp32 parameters under MiniMind's keys (``lm_head.weight`` filled from the tied embedding if absent)."""
    moe_layers = [layer["module_path"] for layer in client_state.get("ds_autoep_layers") or []]
    if location.is_universal:
        state = universal_fp32_state(location)
    elif moe_layers:
        state = autoep_fp32_state(location)
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        try:
            # zero_to_fp32 prints progress bars; keep them out of the command's output
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                state = get_fp32_state_dict_from_zero_checkpoint(str(location.root), tag=location.tag)
        except Exception as error:  # zero_to_fp32 asserts and raises ValueError on foreign shards
            raise CheckpointError(
                f"{location.tag_dir}: DeepSpeed's zero_to_fp32 cannot consolidate it ({type(error).__name__}: {error})"
            ) from None
    if moe_layers:
        state = minimind_expert_keys(state, moe_layers)
    state = {key: tensor.float() for key, tensor in state.items()}
    if TIED_KEY not in state and TIED_SOURCE in state:
        state[TIED_KEY] = state[TIED_SOURCE]
    return state


def universal_fp32_state(location: CheckpointLocation) -> dict[str, torch.Tensor]:
    """Parameters of a universal checkpoint: ``zero/{name}/fp32.pt`` holds ``{"param": tensor, ...}``."""
    state = {}
    for file in sorted((location.tag_dir / "zero").glob("*/fp32.pt")):
        try:
            saved = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as error:
            raise CheckpointError(f"{file}: unreadable parameter file ({type(error).__name__}: {error})") from None
        state[file.parent.name] = saved["param"] if isinstance(saved, dict) else saved
    if not state:
        raise CheckpointError(f"{location.tag_dir}: universal checkpoint without zero/*/fp32.pt parameter files")
    return state


def autoep_fp32_state(location: CheckpointLocation) -> dict[str, torch.Tensor]:
    """Parameters of an AutoEP checkpoint under AutoEP's names, every expert whole.

    ``zero_to_fp32`` cannot read its per-expert files, but ``ds_to_universal`` can: the
    tag is converted in a temporary folder (on local disk: about the size of the fp32
    weights plus the Adam moments) and its per-parameter files read.
    """
    from minimind.checkpoint.universal import convert_to_universal

    with tempfile.TemporaryDirectory(prefix="minimind_export_") as scratch:
        return universal_fp32_state(convert_to_universal(location, scratch))


def load_checkpoint_model(location: CheckpointLocation) -> tuple[MiniMindForCausalLM, dict]:
    """The project's model (fp32, eval mode) holding the checkpoint's weights, and the client state."""
    client_state = read_client_state(location)
    config = MiniMindConfig.from_dict(model_config_dict(location, client_state))
    model = MiniMindForCausalLM(config)
    state = consolidated_fp32_state(location, client_state)
    mismatch = state_dict_mismatch(model, state)
    if mismatch is not None:
        raise CheckpointError(f"{location.tag_dir}: weights do not fit its model_config: {mismatch}")
    model.load_state_dict(state, strict=True)
    return model.eval(), client_state


def export_pth(model: MiniMindForCausalLM, destination: Path, dtype: torch.dtype, save_weight: str) -> Path:
    """MiniMind's ``.pth`` (``destination`` a file, or a folder receiving ``{save_weight}_{hidden}[_moe].pth``)."""
    if destination.is_dir():
        destination = destination / minimind_weights_name(save_weight, model.config.hidden_size, model.config.use_moe)
    return save_minimind_state(model.state_dict(), destination, dtype)


@dataclass(frozen=True)
class ExportedModel:
    """Where an export was written, and for a Hugging Face folder the architecture it holds."""

    path: Path
    architecture: HfArchitecture | None = None


def export_hf(model: MiniMindForCausalLM, destination: Path, dtype: torch.dtype, tokenizer_path: str | None,
              hf_arch: str = "auto") -> ExportedModel:
    """A folder ``AutoModelForCausalLM.from_pretrained(destination)`` loads, as ``choose_hf_architecture`` picks.

    Holds config.json, model.safetensors, generation_config.json and the tokenizer files
    (``export_tokenizer``). A built-in architecture needs nothing more; the custom code adds
    ``modeling_minimind.py`` (``auto_map`` in config.json, ``trust_remote_code=True``), which runs
    the PyTorch reference kernels.
    """
    architecture = choose_hf_architecture(model.config, hf_arch)
    destination.mkdir(parents=True, exist_ok=True)
    config = model.config
    if architecture.native:
        native_model(model.to(dtype)).save_pretrained(destination, safe_serialization=True)
    else:
        save_custom_code_model(model.to(dtype), destination)
    GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=0
    ).save_pretrained(destination)
    export_tokenizer(tokenizer_path, destination, family_chat_template(config.model_family))
    return ExportedModel(destination, architecture)


def save_custom_code_model(model: MiniMindForCausalLM, destination: Path) -> None:
    """``model`` saved with ``auto_map`` to the bundled ``modeling_minimind.py`` (the PyTorch reference kernels)."""
    config = model.config
    config.kernel_impl = "torch"  # the bundled code has no Triton kernels
    config.architectures = ["MiniMindForCausalLM"]
    module = Path(MODULE_FILE).stem
    config.auto_map = {
        "AutoConfig": f"{module}.MiniMindConfig",
        "AutoModel": f"{module}.MiniMindModel",
        "AutoModelForCausalLM": f"{module}.MiniMindForCausalLM",
    }
    model.save_pretrained(destination, safe_serialization=True)
    (destination / MODULE_FILE).write_text(standalone_modeling_source(), encoding="utf-8")


def export_tokenizer(tokenizer_path: str | None, destination: Path, chat_template: str | None = None) -> None:
    """Copy the run's tokenizer files (validated by ``load_tokenizer``) into ``destination``, padding on the left;
    ``chat_template`` (the model family's, ``family_chat_template``; None: the tokenizer's own) becomes the
    export's, so that ``apply_chat_template`` renders conversations as the model was fine-tuned on them.

    Copied, not re-saved: transformers' ``save_pretrained`` writes its load-time options
    (``is_local``, ``local_files_only``) into tokenizer_config.json. Left padding makes ``generate``
    on a padded batch of prompts continue each prompt from its own last token.
    """
    load_tokenizer(tokenizer_path)
    source = tokenizer_folder(tokenizer_path)
    # transformers 5 keeps a chat template apart; a user's tokenizer may carry the older side files
    for name in ("tokenizer.json", "chat_template.jinja", "special_tokens_map.json", "added_tokens.json"):
        if (source / name).is_file():
            shutil.copyfile(source / name, destination / name)
    config = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["padding_side"] = "left"
    if chat_template is not None:
        config["chat_template"] = chat_template
        (destination / "chat_template.jinja").unlink(missing_ok=True)  # it would win over the config's
    (destination / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )


def export_checkpoint(source: CheckpointLocation, destination: str | Path, fmt: str = "hf",
                      dtype: str | None = None, hf_arch: str = "auto") -> ExportedModel:
    """Write checkpoint ``source`` as ``fmt`` (``hf`` or ``pth``) in ``dtype`` (default: fp16 for pth, fp32 for hf);
    ``hf_arch`` picks a Hugging Face folder's architecture (``choose_hf_architecture``)."""
    dtype = dtype or ("fp16" if fmt == "pth" else "fp32")
    if dtype not in PRECISION_DTYPES:
        raise CheckpointError(f"--dtype must be one of {', '.join(PRECISION_DTYPES)}, got {dtype!r}")
    if fmt not in ("hf", "pth"):
        raise CheckpointError(f"--format must be hf or pth, got {fmt!r}")
    model, client_state = load_checkpoint_model(source)
    destination = Path(destination)
    try:
        args = client_state.get("args") or {}
        if fmt == "pth":  # runs from before --save_weight published pretrain_*.pth
            written = export_pth(model, destination, PRECISION_DTYPES[dtype], args.get("save_weight", "pretrain"))
            return ExportedModel(written)
        return export_hf(model, destination, PRECISION_DTYPES[dtype], args.get("tokenizer_path"), hf_arch)
    except OSError as error:  # the destination cannot be written: a file in its path, no space, no permission
        raise CheckpointError(f"{destination}: cannot write the export ({first_line(error)})") from None
