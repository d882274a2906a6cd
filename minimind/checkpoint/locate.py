"""Finding the tags of a DeepSpeed checkpoint folder and reading the client state ``pretrain_ds.py`` saved in one."""

from dataclasses import dataclass
from pathlib import Path

from minimind.checkpoint.errors import CheckpointError
from minimind.checkpoint.manifest import MANIFEST_NAME
from minimind.checkpoint.safe_load import load_checkpoint_file

MODEL_STATES = "mp_rank_00_model_states.pt"
LATEST_NAMES = ("latest", "latest_universal")  # DeepSpeed's pointer files, regular and universal
TAG_PREFIX = "step_"  # pretrain_ds.py names the tag of optimizer step N ``step_N``
UNIVERSAL_FOLDER = "universal"  # {checkpoint_dir}/universal/{tag}: a tag converted for a resume at another size
SUPERSEDED_FOLDER = "superseded"  # {checkpoint_dir}/superseded/{tag}: tags newer than the one a run resumed from


@dataclass(frozen=True)
class CheckpointLocation:
    """One checkpoint tag: ``root`` holds ``latest`` (or ``latest_universal``) and the folder ``root/tag``."""

    root: Path
    tag: str

    @property
    def tag_dir(self) -> Path:
        return self.root / self.tag

    @property
    def is_universal(self) -> bool:
        """True for a folder written by ``ds_to_universal`` (per-parameter files under ``zero/``)."""
        return (self.tag_dir / "zero").is_dir()


def locate_checkpoint(path: str | Path) -> CheckpointLocation:
    """Resolve ``path`` (a checkpoint folder with ``latest``/``latest_universal``, or one tag folder).

    Raises ``CheckpointError`` when the path does not exist, is not a checkpoint, or names
    a tag whose folder is missing.
    """
    path = Path(path).resolve()
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if (path / MODEL_STATES).is_file() or (path / MANIFEST_NAME).is_file():  # a tag (whole or not: verified later)
        return CheckpointLocation(path.parent, path.name)
    for latest_name in LATEST_NAMES:
        latest = path / latest_name
        if latest.is_file():
            tag = latest.read_text().strip()
            if not (path / tag / MODEL_STATES).is_file():
                raise CheckpointError(
                    f"{path}: '{latest_name}' names tag {tag!r}, but {path / tag} holds no checkpoint"
                )
            return CheckpointLocation(path, tag)
    raise CheckpointError(
        f"{path}: not a DeepSpeed checkpoint (neither a folder with a 'latest' file nor a tag folder "
        f"with {MODEL_STATES})"
    )


def tag_step(tag: str) -> int | None:
    """The optimizer step of a ``step_N`` tag name, or None for another name."""
    number = tag[len(TAG_PREFIX):]
    return int(number) if tag.startswith(TAG_PREFIX) and number.isdigit() else None


def step_tags(checkpoint_dir: Path) -> list[Path]:
    """The ``step_N`` tag folders of ``checkpoint_dir``, newest (highest N) first."""
    if not checkpoint_dir.is_dir():
        return []
    tags = [path for path in checkpoint_dir.iterdir() if path.is_dir() and tag_step(path.name) is not None]
    return sorted(tags, key=lambda path: tag_step(path.name), reverse=True)


def latest_tag(checkpoint_dir: Path) -> str | None:
    """The tag ``checkpoint_dir/latest`` (or, in a universal folder, ``latest_universal``) names;
    None without either file."""
    for name in LATEST_NAMES:
        latest = checkpoint_dir / name
        if latest.is_file():
            return latest.read_text().strip()
    return None


def read_client_state(location: CheckpointLocation) -> dict:
    """The top-level dict of ``mp_rank_00_model_states.pt`` minus the module weights.

    Read through ``load_checkpoint_file``: weights-only plus DeepSpeed's own classes, so
    no code from the file runs unless the user passed ``--trust_checkpoint``.
    """
    path = location.tag_dir / MODEL_STATES
    try:
        # mmap: the module's tensors stay on disk, only the metadata is read
        state = load_checkpoint_file(path, map_location="cpu", mmap=True)
    except CheckpointError:
        raise
    except Exception as error:  # a truncated or foreign file
        raise CheckpointError(f"{path}: unreadable checkpoint file ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of model states, found {type(state).__name__}")
    state.pop("module", None)
    return state


def model_config_dict(location: CheckpointLocation, client_state: dict) -> dict:
    """The ``MiniMindConfig`` dict ``pretrain_ds.py`` recorded, or a one-line error naming the file."""
    config = client_state.get("model_config")
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{location.tag_dir / MODEL_STATES}: no 'model_config' in the client state (not written by pretrain_ds.py)"
        )
    return config
