"""Whether this node can build the host-side optimizer of a ZeRO-Offload config, checked before the process group.

With ``zero_optimization.offload_optimizer.device`` ``cpu`` (or ``nvme``) DeepSpeed steps the
optimizer on the host with a C++ op of its own: ``cpu_adam`` for Adam and AdamW (unless
``torch_adam``), ``cpu_adagrad`` and ``cpu_lion`` for Adagrad and Lion. Unless DeepSpeed was
installed with the op built (``DS_BUILD_CPU_ADAM=1 pip install deepspeed``), every node builds it
at ``deepspeed.initialize`` through torch's extension loader, which needs ``ninja`` each time
(it also checks a build made earlier) and, while torch's extension cache (``TORCH_EXTENSIONS_DIR``,
default ``~/.cache/torch_extensions``) holds no build of the op, a C++ compiler (``$CXX`` or
``c++``) and the Python headers. Without them the run would end in a compiler's traceback from
inside ``deepspeed.initialize`` on that node; this says in one line what to install.
"""

import shutil
import sys
import sysconfig
from pathlib import Path

from deepspeed import git_version_info
from deepspeed.accelerator import get_accelerator
from torch.utils import cpp_extension

from minimind.errors import MissingDependencyError

# DeepSpeed's host-side op for each optimizer type (as DeepSpeed reads ``optimizer.type``, lower-cased).
HOST_OPTIMIZER_OPS = {"adam": "cpu_adam", "adamw": "cpu_adam", "adagrad": "cpu_adagrad", "lion": "cpu_lion"}
OFFLOAD_DEVICES = ("cpu", "nvme")  # where DeepSpeed steps the optimizer on the host


def host_optimizer_op(ds_config: dict) -> str | None:
    """The DeepSpeed op that steps the config's optimizer on the host, None where the optimizer is not
    offloaded or is torch's own (``torch_adam``)."""
    offload = (ds_config.get("zero_optimization") or {}).get("offload_optimizer") or {}
    if offload.get("device") not in OFFLOAD_DEVICES:
        return None
    optimizer = ds_config.get("optimizer") or {}
    name = str(optimizer.get("type", "")).lower()
    if name in ("adam", "adamw") and (optimizer.get("params") or {}).get("torch_adam"):
        return None
    return HOST_OPTIMIZER_OPS.get(name)


def op_prebuilt(op: str) -> bool:
    """Whether DeepSpeed was installed with ``op`` built for this accelerator (then it loads without a build),
    the test ``OpBuilder.load`` makes."""
    return bool(git_version_info.installed_ops.get(op)) and git_version_info.accelerator_name == get_accelerator()._name


def jit_build_cached(op: str) -> bool:
    """Whether torch's extension cache holds a build of ``op`` (ninja then finds it up to date: no compiler)."""
    # torch's own choice of folder (TORCH_EXTENSIONS_DIR, or the default root per Python and CUDA version);
    # it creates the folder, as the build would
    return (Path(cpp_extension._get_build_directory(op, verbose=False)) / f"{op}.so").is_file()


def missing_build_tools(op: str) -> list[str]:
    """What this node lacks to load ``op`` (nothing where it is prebuilt), each with how to install it."""
    if op_prebuilt(op):
        return []
    missing = [] if cpp_extension.is_ninja_available() else ["ninja (pip install ninja)"]
    if jit_build_cached(op):
        return missing
    compiler = cpp_extension.get_cxx_compiler()
    if shutil.which(compiler) is None:
        missing.append(f"a C++ compiler, {compiler} (apt install g++, or set CXX)")
    headers = Path(sysconfig.get_path("include", scheme="posix_prefix"))
    if not (headers / "Python.h").is_file():
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        missing.append(f"the Python headers, {headers / 'Python.h'} (apt install python{version}-dev)")
    return missing


def check_host_optimizer_build(ds_config: dict, source: str) -> None:
    """A one-line ``MissingDependencyError`` naming what to install where the config (from ``source``)
    offloads its optimizer to an op this node cannot build; a config without offload checks nothing."""
    op = host_optimizer_op(ds_config)
    if op is None:
        return
    missing = missing_build_tools(op)
    if missing:
        raise MissingDependencyError(
            f"{source}: ZeRO-Offload steps the optimizer with DeepSpeed's {op} op, which this node would build at "
            f"start, but it lacks {'; '.join(missing)}; install them, or install DeepSpeed with the op built "
            f"(DS_BUILD_{op.upper()}=1 pip install deepspeed)")
