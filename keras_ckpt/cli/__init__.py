"""`keras-ckpt`: inspect, verify, prune, export and plot a checkpoint directory from the shell.

Every command reads the directory through `keras_ckpt.CheckpointManager`, so it sees exactly the
checkpoints the callbacks committed. Exit status: 0 on success, 1 when `verify` finds damage, 2 for
an error (printed as one line on stderr). Tables need the `cli` extra (rich), `plot` the `plot`
extra (matplotlib); Keras itself is never imported.

Example:
    $ keras-ckpt list runs/exp1 --why
    $ keras-ckpt verify runs/exp1 && keras-ckpt export runs/exp1 best best.keras
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

from keras_ckpt import __version__
from keras_ckpt.cli._common import CliError, parse_size
from keras_ckpt.errors import KerasCkptError

__all__ = ["main"]

PROG = "keras-ckpt"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _owner(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError(
            "expected a callback's owner, as `list --json` shows it (e.g. "
            "'ModelCheckpoint:model-{epoch}.keras'), got ''"
        )
    return text


def _run_id(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a run id or 'all', got ''")
    return text.strip()


def _image(text: str) -> str:
    if os.path.splitext(text)[1].lower() not in (".png", ".svg", ".pdf"):
        raise argparse.ArgumentTypeError(
            f"expected an image file name ending in .png, .svg or .pdf, got {text!r}"
        )
    return text


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _command(
    subparsers: argparse._SubParsersAction, name: str, summary: str, example: str
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help=summary,
        description=summary,
        epilog="example:\n" + example,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("directory", metavar="DIR", help="checkpoint directory (or fsspec URL)")
    parser.add_argument(
        "--run",
        metavar="ID|all",
        type=_run_id,
        help="the run to work on, or all of them (default: the newest run; "
        "`keras-ckpt history DIR --run all` lists the runs)",
    )
    return parser


def _which(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "which", metavar="NAME|latest|best", help="a checkpoint name, `latest` or `best`"
    )
    parser.add_argument(
        "--monitor", help="metric for `best` (default: the one its callback monitored)"
    )
    parser.add_argument("--mode", choices=("min", "max"), help="for `best` (default: inferred)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect, verify, prune, export, average and plot keras-ckpt checkpoint "
        "directories.",
        epilog=(
            "examples:\n  keras-ckpt list runs/exp1 --why\n  keras-ckpt verify runs/exp1\n"
            "  keras-ckpt prune runs/exp1 --keep-best 3 --monitor val_loss --dry-run\n\n"
            "exit status: 0 ok, 1 damaged checkpoints found by verify, 2 error"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _command(
        sub,
        "list",
        "Table of the checkpoints: name, epoch, step of epoch, global step, metrics, size, age "
        "(a file deleted by hand is marked missing).",
        "  keras-ckpt list runs/exp1 --why --sort val_loss\n"
        "  keras-ckpt list runs/exp1 --json | jq '.checkpoints[].name'",
    )
    p.add_argument(
        "--why",
        action="store_true",
        help="add why each is kept, by the retention policy its callback recorded",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--sort",
        metavar="KEY",
        help=(
            "a metric (best first) or name, epoch, global_step, size, age (default: oldest first)"
        ),
    )

    p = _command(
        sub,
        "show",
        "What one checkpoint holds: architecture, weights, optimizer state, sizes, versions.",
        "  keras-ckpt show runs/exp1 best\n  keras-ckpt show runs/exp1 model-007.keras --json",
    )
    _which(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = _command(
        sub,
        "verify",
        "Check every checkpoint's files against its record (exit 1 if any is damaged).",
        "  keras-ckpt verify runs/exp1 || echo 'damaged checkpoints'",
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="verify only this checkpoint")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = _command(
        sub,
        "prune",
        "Delete the checkpoints no keep option keeps (options combine: keep what any keeps). "
        "Without keep options, apply the retention policy the checkpoints' callback recorded "
        "(the one `list --why` shows). The newest checkpoint is always kept.",
        "  keras-ckpt prune runs/exp1 --keep-last 2 --keep-best 3 --monitor val_loss --dry-run\n"
        "  keras-ckpt prune runs/exp1 --max-total-bytes 2GiB\n"
        "  keras-ckpt prune runs/exp1 --dry-run    # the recorded policy",
    )
    p.add_argument("--keep-last", type=_positive_int, metavar="N", help="the N newest")
    p.add_argument("--keep-best", type=_positive_int, metavar="N", help="the N best by --monitor")
    p.add_argument(
        "--monitor", help="metric for --keep-best (default: the one its callback monitored)"
    )
    p.add_argument("--mode", choices=("min", "max"), help="for --keep-best (default: inferred)")
    p.add_argument(
        "--keep-every-n-epochs", type=_positive_int, metavar="N", help="one per N epochs"
    )
    p.add_argument(
        "--max-total-bytes",
        type=_size,
        metavar="SIZE",
        help="the newest that fit in SIZE (500MB, 2GiB or bytes)",
    )
    p.add_argument("--owner", type=_owner, help="prune only this callback's checkpoints")
    p.add_argument("--dry-run", action="store_true", help="only print what would be deleted")
    p.add_argument(
        "--simulate",
        action="store_true",
        help="replay the keep options over the run's whole history (pruned saves included) and "
        "print what they would have kept and the disk used; touches no file",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = _command(
        sub,
        "export",
        "Copy one checkpoint to a standalone file that plain Keras loads.",
        "  keras-ckpt export runs/exp1 best best.keras        # keras.saving.load_model\n"
        "  keras-ckpt export runs/exp1 latest w.weights.h5    # model.load_weights",
    )
    _which(p)
    p.add_argument("output", metavar="OUT", help="OUT.keras (full model) or OUT.weights.h5")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")

    p = _command(
        sub,
        "average",
        "Average the weights of several checkpoints into one file that plain Keras loads.",
        "  keras-ckpt average runs/exp1 last:5 averaged.keras\n"
        "  keras-ckpt average runs/exp1 best:3 avg.weights.h5 --monitor val_accuracy",
    )
    p.add_argument(
        "select", metavar="SELECT", help="last:N, best:N, or checkpoint names joined by commas"
    )
    p.add_argument("output", metavar="OUT", help="OUT.keras (full models) or OUT.weights.h5")
    p.add_argument("--monitor", help="metric for best:N (default: the one its callback monitored)")
    p.add_argument("--mode", choices=("min", "max"), help="for best:N (default: inferred)")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")

    p = _command(
        sub,
        "history",
        "Every save of a run, pruned ones included, from the run history log: where in training, "
        "metrics, size, and whether it still exists or why it was deleted.",
        "  keras-ckpt history runs/exp1\n  keras-ckpt history runs/exp1 --run all --json",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = _command(
        sub,
        "plot",
        "Plot monitored metrics over the whole run, one line per run: a dot per checkpoint that "
        "exists, a cross per save retention pruned (from the run history), the best starred "
        "(PNG/SVG/PDF).",
        "  keras-ckpt plot runs/exp1 -o run.png\n"
        "  keras-ckpt plot runs/exp1 -o run.png --metric val_accuracy --x step",
    )
    p.add_argument(
        "-o", "--output", type=_image, required=True, help="image file to write (.png, .svg, .pdf)"
    )
    p.add_argument(
        "--metric",
        action="append",
        help="metric to plot; repeat for more (default: the monitored one and its train twin)",
    )
    p.add_argument(
        "--x", choices=("epoch", "step"), default="epoch", help="x axis: epoch or global step"
    )
    p.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "show":
        from keras_ckpt.cli._show import cmd_show

        return cmd_show(args)
    if args.command == "average":
        from keras_ckpt.cli._history import cmd_average

        return cmd_average(args)
    if args.command == "prune" and args.simulate:
        from keras_ckpt.cli._history import cmd_simulate

        return cmd_simulate(args)
    if args.command == "history":
        from keras_ckpt.cli._history import cmd_history

        return cmd_history(args)
    if args.command == "plot":
        from keras_ckpt.cli._plot import cmd_plot

        return cmd_plot(args)
    from keras_ckpt.cli import _commands

    return int(getattr(_commands, f"cmd_{args.command}")(args))


def _warn(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `keras-ckpt` with `argv` (default: `sys.argv[1:]`); returns the exit status."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _warn
        try:
            return _run(args)
        except BrokenPipeError:  # `keras-ckpt list DIR | head`
            return 0
        except (CliError, KerasCkptError, ValueError, OSError) as e:
            message = " ".join(str(e).split()) or type(e).__name__
            print(f"{PROG}: error: {message}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130
