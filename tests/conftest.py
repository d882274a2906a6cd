import os

# Triton decides at kernel-decoration time whether to interpret, so this must be set before
# any test imports the kernels: on CPU-only machines the Triton kernels run interpreted.
# On a GPU machine run `TRITON_INTERPRET=0 pytest` to test the compiled kernels instead.
os.environ.setdefault("TRITON_INTERPRET", "1")
