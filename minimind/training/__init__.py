"""The training side, in layers that import downwards only (tests/test_layers.py): ``position`` (where
training stands), then ``distributed``, ``hardware``, ``ds_config``, ``run_dir``, ``checkpoints``, ``parallel``,
``evaluation``, ``metrics``, ``loop``, ``run``, and on top ``arguments`` (the flags) and ``pretrain``
(the run built from them)."""
