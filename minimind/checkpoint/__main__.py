"""Command line: ``python -m minimind.checkpoint {export,to-universal,inspect} SRC [DST]``.

    python -m minimind.checkpoint export out/checkpoints hf_out --format hf --dtype bf16
    python -m minimind.checkpoint export out/checkpoints/step_200 model.pth --format pth
    python -m minimind.checkpoint to-universal out/checkpoints universal_out
    python -m minimind.checkpoint inspect out/checkpoints

SRC is a checkpoint folder (with ``latest``) or one tag folder in it. A bad path, or a file
holding pickled objects beyond DeepSpeed's own (see ``safe_load``), gives a one-line error
and exit status 2.
"""

import argparse
import sys

from minimind.checkpoint.export import export_checkpoint
from minimind.checkpoint.locate import locate_checkpoint
from minimind.checkpoint.safe_load import checkpoint_loading
from minimind.checkpoint.summary import describe_checkpoint
from minimind.checkpoint.universal import convert_to_universal
from minimind.errors import UserInputError
from minimind.model.precision import PRECISION_DTYPES
from minimind.training.arguments import POSITIVE, FlagParser


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
    universal = commands.add_parser("to-universal", help="convert a ZeRO checkpoint tag to the universal format")
    universal.add_argument("source", help="checkpoint folder (with 'latest') or tag folder")
    universal.add_argument("destination", help="folder receiving {tag}/ and latest_universal")
    universal.add_argument("--workers", type=POSITIVE, default=1, help="processes for extracting and merging shards")
    inspect = commands.add_parser("inspect", help="print what a checkpoint holds, reading no tensors")
    inspect.add_argument("source", help="checkpoint folder (with 'latest') or tag folder; ZeRO or universal")
    for command in (export, universal, inspect):
        command.add_argument("--trust_checkpoint", action="store_true",
                             help="unpickle SRC without the weights-only check (runs code from it)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one command; bad input is one line on stderr and its exit status (2)."""
    try:
        args = parse_args(argv)
        with checkpoint_loading(trusted=args.trust_checkpoint):
            run_command(args)
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_status
    return 0


def run_command(args: argparse.Namespace) -> None:
    """Carry out one parsed command."""
    source = locate_checkpoint(args.source)
    if args.command == "export":
        written = export_checkpoint(source, args.destination, args.format, args.dtype)
        print(f"exported {source.tag_dir} as {args.format} to {written}")
    elif args.command == "inspect":
        print("\n".join(describe_checkpoint(source)))
    else:
        converted = convert_to_universal(source, args.destination, workers=args.workers)
        print(f"universal checkpoint {converted.tag_dir} (resume with --resume_from {converted.tag_dir})")


if __name__ == "__main__":
    sys.exit(main())
