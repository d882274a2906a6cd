"""Named model sizes: MiniMind's own (minimind2's three, minimind-3's two) and larger ones for users
outgrowing them.

The larger presets keep head_dim at 64, KV heads at a quarter or third of the query
heads (GQA), and widths multiples of 64 so matrix shapes suit tensor cores. Parameter counts
(tied embeddings, vocab 6400) are checked by the tests; minimind-3's are those of upstream's own
model at these sizes (its README: 64M and 198M-A64M).

| preset    | hidden x layers | heads / kv | FFN                                   | parameters          |
|-----------|-----------------|------------|---------------------------------------|---------------------|
| 26m       | 512 x 8         | 8 / 2      | 1408                                  | 25.83M              |
| 104m      | 768 x 16        | 8 / 2      | 2048                                  | 104.03M             |
| 145m-moe  | 640 x 8         | 8 / 2      | 4 experts (top-2) + 1 shared, 1728    | 145.03M             |
| 350m      | 1152 x 24       | 18 / 6     | 3072                                  | 347.17M             |
| 1b        | 2048 x 22       | 32 / 8     | 5504                                  | 987.85M             |
| moe-4b    | 2048 x 24       | 32 / 8     | 16 experts (top-2) + 1 shared, 1408   | 3.80B (0.9B active) |

minimind3 family (per-head q/k RMSNorm, head_dim 96, no shared experts):

| preset         | hidden x layers | heads / kv | FFN                        | parameters              |
|----------------|-----------------|------------|----------------------------|-------------------------|
| minimind-3     | 768 x 8         | 8 / 4      | 2432                       | 63.91M                  |
| minimind-3-moe | 768 x 8         | 8 / 4      | 4 experts (top-1), 2432    | 198.42M (63.94M active) |
"""

from minimind.model.config import ModelConfigError

PRESETS: dict[str, dict] = {
    "26m": {"hidden_size": 512, "num_hidden_layers": 8},
    "104m": {"hidden_size": 768, "num_hidden_layers": 16},
    "145m-moe": {"hidden_size": 640, "num_hidden_layers": 8, "use_moe": True},
    "350m": {"hidden_size": 1152, "num_hidden_layers": 24, "num_attention_heads": 18, "num_key_value_heads": 6},
    "1b": {"hidden_size": 2048, "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 8},
    "moe-4b": {
        "hidden_size": 2048,
        "num_hidden_layers": 24,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "use_moe": True,
        "n_routed_experts": 16,
        "num_experts_per_tok": 2,
        "n_shared_experts": 1,
        "intermediate_size": 1408,
    },
    "minimind-3": {"model_family": "minimind3", "hidden_size": 768, "num_hidden_layers": 8},
    "minimind-3-moe": {"model_family": "minimind3", "hidden_size": 768, "num_hidden_layers": 8, "use_moe": True},
}


def preset_config_kwargs(name: str) -> dict:
    """The ``MiniMindConfig`` keyword arguments of preset ``name`` (a copy)."""
    if name not in PRESETS:
        raise ModelConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])
