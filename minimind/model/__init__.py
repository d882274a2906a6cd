"""The MiniMind model: configuration, decoder and causal-LM head."""

from minimind.model.config import MiniMindConfig
from minimind.model.modeling import MiniMindForCausalLM, MiniMindModel

__all__ = ["MiniMindConfig", "MiniMindForCausalLM", "MiniMindModel"]
