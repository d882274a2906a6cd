"""DeepSpeed pretraining for MiniMind-family language models.

``from minimind import MiniMindConfig, MiniMindForCausalLM`` gives the model; importing the
package also registers ``model_type: "minimind"`` with ``AutoConfig`` and
``AutoModelForCausalLM``.
"""

import importlib.util

from transformers import AutoConfig, AutoModelForCausalLM

# The kernels' folder kernels/ is imported as minimind_kernels, a name only the project's install
# provides (pyproject.toml; kernels/functional.py says why): say so rather than fail deep inside.
if importlib.util.find_spec("minimind_kernels") is None:
    raise ImportError("minimind_kernels (the folder kernels/) is not installed: run `pip install -e .` "
                      "in the repository (README: Set up and run)")

from minimind.model import MiniMindConfig, MiniMindForCausalLM

AutoConfig.register(MiniMindConfig.model_type, MiniMindConfig, exist_ok=True)
AutoModelForCausalLM.register(MiniMindConfig, MiniMindForCausalLM, exist_ok=True)

__all__ = ["MiniMindConfig", "MiniMindForCausalLM"]
