"""The ``pql`` command: ``pql train KEY=VALUE ...`` and ``pql export RUN_DIR``."""

from __future__ import annotations

import argparse
import sys
import textwrap

from pql.config import ConfigError, describe, parse_overrides


def _train_help() -> str:
    lines = ["keys (KEY=VALUE; nested keys are dotted, e.g. algo.batch_size=4096):", ""]
    for key, default, meaning in describe():
        shown = list(default) if isinstance(default, tuple) else default
        lines.append(f"  {key} (default: {shown})")
        lines.extend(textwrap.wrap(meaning, 76, initial_indent="      ", subsequent_indent="      "))
    lines += ["", "Task presets (pql/presets.yaml) override the defaults above; your KEY=VALUE always wins.",
              "Resume a run: pql train resume=RUN_DIR [max_time_s=...] [max_env_steps=...]."]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pql", description="Parallel Q-Learning benchmarking suite.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train one run", formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="Train PQL / PQL-D on a batched simulator; writes a run directory with "
                                       "config.yaml, metrics.csv, status.json and checkpoint.pt.",
                           epilog=_train_help())
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    export = sub.add_parser("export", help="write RUN_DIR/policy.pt, a TorchScript policy in env units",
                            description="Export the run's policy: raw observations [B, D] -> actions [B, A] "
                                        "in the environment's own units, as TorchScript.")
    export.add_argument("run_dir", help="a run directory with checkpoint.pt")
    export.add_argument("--out", default=None, help="output path (default RUN_DIR/policy.pt)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            from pql.train import resolve, run_training

            cfg = resolve(parse_overrides(args.overrides))
            run_dir = run_training(cfg)
            print(f"run finished: {run_dir.path}")
        elif args.command == "export":
            from pql.export import export_policy

            print(f"wrote {export_policy(args.run_dir, args.out)}")
    except ConfigError as err:
        print(f"pql: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"pql: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pql: interrupted (checkpoint written)", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the run directory's status.json has the traceback
        print(f"pql: run failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
