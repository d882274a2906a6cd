"""Command line: ``python -m minimind.checkpoint {export,to-universal,inspect,verify} SRC [DST]``.

    python -m minimind.checkpoint export out/checkpoints hf_out --format hf --dtype bf16
    python -m minimind.checkpoint export out/checkpoints hf_out --hf_arch custom
    python -m minimind.checkpoint export out/checkpoints/step_200 model.pth --format pth
    python -m minimind.checkpoint to-universal out/checkpoints universal_out
    python -m minimind.checkpoint inspect out/checkpoints
    python -m minimind.checkpoint verify out/checkpoints

SRC is a checkpoint folder (with ``latest``) or one tag folder in it. Every command but
``verify`` first checks the tag's files against its manifest. A bad path, a broken tag, or a
file holding pickled objects beyond DeepSpeed's own (see ``safe_load``), gives a one-line
error and exit status 2; ``verify`` prints one line per tag and ends with status 1 when one
is broken.
"""

import argparse
import sys
from pathlib import Path

from minimind.checkpoint.export import export_checkpoint
from minimind.checkpoint.hf_architecture import HF_ARCHITECTURES
from minimind.checkpoint.integrity import TagKind, describe_verdict, require_intact, verify_tag
from minimind.checkpoint.locate import latest_tag, locate_checkpoint, step_tags
from minimind.checkpoint.manifest import VERIFY_MODES
from minimind.checkpoint.safe_load import checkpoint_loading
from minimind.checkpoint.summary import describe_checkpoint
from minimind.checkpoint.universal import convert_to_universal
from minimind.errors import UserInputError
from minimind.flags import POSITIVE, FlagParser
from minimind.model.precision import PRECISION_DTYPES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command and its flags; a bad flag is a one-line ``ConfigError``."""
    parser = FlagParser(prog="python -m minimind.checkpoint", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write Hugging Face or MiniMind .pth weights from a checkpoint")
    export.add_argument("source", help="checkpoint folder (with 'latest') or tag folder; ZeRO or universal")
    export.add_argument("destination", help="hf: output folder; pth: output file (or folder)")
    export.add_argument("--format", choices=("hf", "pth"), default="hf")
    export.add_argument("--dtype", choices=tuple(PRECISION_DTYPES), default=None,
                        help="default: fp16 for pth, fp32 for hf")
    export.add_argument("--hf_arch", choices=HF_ARCHITECTURES, default="auto",
                        help="hf: a built-in transformers architecture where one is exact (auto), always (native: "
                             "an error where none is) or the bundled MiniMind code (custom, trust_remote_code)")
    universal = commands.add_parser("to-universal", help="convert a ZeRO checkpoint tag to the universal format")
    universal.add_argument("source", help="checkpoint folder (with 'latest') or tag folder")
    universal.add_argument("destination", help="folder receiving {tag}/ and latest_universal")
    universal.add_argument("--workers", type=POSITIVE, default=1, help="processes for extracting and merging shards")
    inspect = commands.add_parser("inspect", help="print what a checkpoint holds, reading no tensors")
    inspect.add_argument("source", help="checkpoint folder (with 'latest') or tag folder; ZeRO or universal")
    verify = commands.add_parser("verify", help="check a tag, or every tag of a folder, against its manifest")
    verify.add_argument("source", help="checkpoint folder (every step_N tag in it) or one tag folder")
    verify.add_argument("--verify_checkpoint", choices=VERIFY_MODES, default="checksum",
                        help="sizes and checksums, or sizes only (quick)")
    for command in (export, universal, inspect):
        command.add_argument("--trust_checkpoint", action="store_true",
                             help="unpickle SRC without the weights-only check (runs code from it)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one command; bad input is one line on stderr and its exit status (2); ``verify`` ends
    with status 1 when a tag is broken."""
    try:
        args = parse_args(argv)
        if args.command == "verify":
            return verify_command(Path(args.source), checksums=args.verify_checkpoint == "checksum")
        with checkpoint_loading(trusted=args.trust_checkpoint):
            run_command(args)
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_status
    return 0


def verify_command(source: Path, checksums: bool) -> int:
    """Print one line per tag of ``source`` (a tag folder, or a folder of ``step_N`` tags); 1 when one is broken."""
    source = source.resolve()
    tag_dirs = step_tags(source)  # a folder of tags: each of them, whatever state latest's tag is in
    if not tag_dirs:
        tag_dirs = [locate_checkpoint(source).tag_dir]
    latest = latest_tag(tag_dirs[0].parent)
    verdicts = [(tag_dir, verify_tag(tag_dir, latest, checksums)) for tag_dir in tag_dirs]
    for tag_dir, verdict in verdicts:
        print(describe_verdict(tag_dir, verdict, checksums))
    return 0 if all(verdict.loadable for _, verdict in verdicts) else 1


def run_command(args: argparse.Namespace) -> None:
    """Carry out one parsed command on a source whose files first verify against its manifest
    (a tag from before manifests is used as it is, with a warning once the command is done)."""
    source = locate_checkpoint(args.source)
    verdict = require_intact(source)
    integrity = describe_verdict(source.tag_dir, verdict, checksums=True)
    if args.command == "export":
        exported = export_checkpoint(source, args.destination, args.format, args.dtype, args.hf_arch)
        print(f"exported {source.tag_dir} as {args.format} to {exported.path}")
        if exported.architecture is not None:
            print(exported.architecture.describe())
    elif args.command == "inspect":
        print("\n".join([*describe_checkpoint(source), f"integrity: {integrity}"]))
        return
    else:
        converted = convert_to_universal(source, args.destination, workers=args.workers)
        print(f"universal checkpoint {converted.tag_dir} (resume with --resume_from {converted.tag_dir})")
    if verdict.kind is TagKind.PRE_MANIFEST:
        print(f"warning: {integrity}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
