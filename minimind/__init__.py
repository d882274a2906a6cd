"""DeepSpeed pretraining for MiniMind-family language models.

``from minimind import MiniMindConfig, MiniMindForCausalLM`` gives the model; importing the
package also registers ``model_type: "minimind"`` with ``AutoConfig`` and
``AutoModelForCausalLM``.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from minimind.model import MiniMindConfig, MiniMindForCausalLM

AutoConfig.register(MiniMindConfig.model_type, MiniMindConfig, exist_ok=True)
AutoModelForCausalLM.register(MiniMindConfig, MiniMindForCausalLM, exist_ok=True)

__all__ = ["MiniMindConfig", "MiniMindForCausalLM"]
