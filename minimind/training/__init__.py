"""The training side of every stage (pretraining, SFT, DPO), in layers that import downwards only
(tests/test_layers.py): ``stages`` (each stage's script, data and defaults), ``position`` (where training stands),
``config``, then ``distributed``, ``hardware``, ``ds_config``, ``run_dir``, ``checkpoints``, ``parallel``,
``evaluation``, ``metrics``, ``loop``, ``run``, and on top ``arguments`` (the flags), ``stage_run`` (the run built
from them) and ``entry`` (the scripts' command line)."""
