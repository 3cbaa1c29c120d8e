"""The `kpool` command: run an experiment, report it, merge shards.

    kpool run CONFIG [--set key.sub=value ...] [--shard i/n] [--output-dir D]
              [--verbose 0|1|2]
    kpool report DIR
    kpool merge DIR_OR_RUNS_CSV ... --out DIR

Exit codes: 0 success; 1 some runs failed (the others are saved); 2 bad
config or arguments, or an unreadable results table; 3 the data set is
unavailable; 130 interrupted.
Choose the Keras backend with the KERAS_BACKEND environment variable.
"""

import argparse
import importlib.util
import os
import sys


def _set_by_user(name):
    """Whether the environment variable `name` was set when this process
    started: importing JAX sets TF_CPP_MIN_LOG_LEVEL itself (to 1), and
    `import kpool` imports JAX before this module runs."""
    try:
        with open("/proc/self/environ", "rb") as f:
            entries = f.read().split(b"\0")
    except OSError:  # no /proc (macOS, Windows): the best guess left
        return name in os.environ
    return any(entry.startswith(f"{name}=".encode()) for entry in entries)


# TensorFlow's C++ logs (start-up banners, and on a machine without a GPU an
# error-level "failed call to cuInit") would bury the progress lines; real
# failures still reach Python as exceptions. TensorFlow reads the variable
# when it is imported, so it is set before anything imports it; a user who
# wants the logs sets it (TF_CPP_MIN_LOG_LEVEL=0).
TF_LOG_LEVEL_FROM_USER = _set_by_user("TF_CPP_MIN_LOG_LEVEL")
if not TF_LOG_LEVEL_FROM_USER:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

RUN_EPILOG = """\
Results go to OUTPUT_DIR/NAME (the config's `output_dir` and `name`):
runs.csv, epochs.csv, summary.csv, config.yaml and PNG plots. Finished runs
are skipped when the command is repeated; interrupted or failed ones run
again. With --shard i/n (1-based, 1 <= i <= n) this process runs runs i,
i+n, i+2n, ... of the grid and writes runs.shard-i-of-n.csv; start n
processes (e.g. one per GPU or machine) on the same directory, or `kpool
merge` their directories afterwards.
"""


def _parser():
    parser = argparse.ArgumentParser(
        prog="kpool",
        description="Pooling ablations on CIFAR-10 with Keras 3.",
        epilog="Set KERAS_BACKEND=jax|tensorflow|torch to pick the backend.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="train the grid of an experiment config",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("config", help="experiment YAML file")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.epochs=5 "
        "(the value is read as YAML; repeatable)",
    )
    run.add_argument(
        "--shard", metavar="I/N", help="run only shard I of N (1-based)"
    )
    run.add_argument("--output-dir", help="same as --set output_dir=OUTPUT_DIR")
    run.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=None,
        help="Keras fit verbosity: 0 silent, 1 progress bar, 2 one line "
        "per epoch (default: 1 on a terminal, 2 when the output goes to a "
        "file or pipe)",
    )

    report = commands.add_parser(
        "report", help="print the summary of an experiment directory"
    )
    report.add_argument("directory", help="directory holding runs*.csv")

    merge = commands.add_parser(
        "merge",
        help="merge result directories (e.g. shards) into one",
    )
    merge.add_argument(
        "sources", nargs="+", help="directories or runs*.csv files"
    )
    merge.add_argument(
        "--out", required=True, help="directory to write the merged tables"
    )
    return parser


def default_verbosity(stream):
    """1 (a progress bar) on a terminal; 2 (one line per epoch) otherwise,
    where a progress bar would write one long line of redraws per epoch."""
    try:
        return 1 if stream.isatty() else 2
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return 2


def import_tensorflow_quietly():
    """Imports TensorFlow, if installed, with the process's stderr closed.

    Loading TensorFlow's libraries prints lines ("Could not find cuda
    drivers", "All log messages before absl::InitializeLog() ...") before
    its logging starts, which no TF_CPP_MIN_LOG_LEVEL silences. Keras
    imports TensorFlow on every backend when it is installed
    (`keras.utils.set_random_seed`), so a run pays for the import anyway.
    A failed import is left to Keras, which then treats TensorFlow as
    absent.
    """
    if "tensorflow" in sys.modules or not importlib.util.find_spec(
        "tensorflow"
    ):
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                import tensorflow  # noqa: F401
            except ImportError:
                pass
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _run(args):
    from kpool.harness.config import load_config
    from kpool.harness.experiment import parse_shard, run_experiment

    overrides = list(args.overrides)
    if args.output_dir is not None:
        overrides.append(f"output_dir={args.output_dir}")
    config = load_config(args.config, overrides)
    shard = parse_shard(args.shard) if args.shard is not None else None
    verbose = args.verbose
    if verbose is None:
        verbose = default_verbosity(sys.stdout)
    if not TF_LOG_LEVEL_FROM_USER:
        import_tensorflow_quietly()
    outcome = run_experiment(config, shard=shard, verbose=verbose)
    return 1 if outcome.failed else 0


def _report(args):
    from kpool.harness import report_file

    # report.md, when it was made from the directory's tables as they are
    # now, spares importing pandas and scipy (a second on 2 cores).
    text = report_file.read_report(args.directory)
    if text is None:
        from kpool.harness import results

        text = results.directory_report(args.directory)
    print(text)
    return 0


def _merge(args):
    from kpool.harness import results

    _, text = results.merge(args.sources, args.out)
    print(text)
    return 0


def main(argv=None):
    args = _parser().parse_args(argv)
    command = {"run": _run, "report": _report, "merge": _merge}[args.command]
    try:
        return command(args)
    except KeyboardInterrupt:
        print(
            f"kpool {args.command}: interrupted. Finished runs are saved; "
            "run the same command again to resume.",
            file=sys.stderr,
        )
        return 130
    except Exception as e:
        status = _exit_status(e)
        if status is None:
            raise
        kind = "data unavailable" if status == 3 else "error"
        print(f"kpool {args.command}: {kind}: {e}", file=sys.stderr)
        return status


def _exit_status(error):
    """3 for data that is not on this machine, 2 for bad input, None for
    anything else (a bug: its traceback is shown). The error classes are
    imported only on this path: `kpool report` needs neither the data
    module (NumPy) nor the results module (pandas) when report.md is
    fresh."""
    from kpool.harness.config import ConfigError
    from kpool.harness.data import DataUnavailableError
    from kpool.harness.results import UnreadableTableError

    if isinstance(error, DataUnavailableError):
        return 3
    if isinstance(
        error, (ConfigError, FileNotFoundError, UnreadableTableError)
    ):
        return 2
    return None


if __name__ == "__main__":
    sys.exit(main())
