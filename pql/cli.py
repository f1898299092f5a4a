"""The ``pql`` command: ``train``, ``export``, ``ablate``, ``status`` and ``report``."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pql.ablate.spec import FIGURE_KINDS
from pql.config import ConfigError, describe, parse_overrides
from pql.preload import preload_simulator
from pql.store.claims import ClaimRule
from pql.training.interrupt import RunInterrupted

if TYPE_CHECKING:
    from pql.ablate.runner import Plan


def _refuse_a_finished_out(overrides: dict[str, str]) -> None:
    """ConfigError when ``out=`` names a directory that holds a run already (its config.yaml) and this is not its
    resumption: a new run there would mix its rows into the old run's metrics."""
    out = overrides.get("out")
    if out and not overrides.get("resume") and (Path(out) / "config.yaml").exists():
        raise ConfigError(f"out={out} holds a run already (its config.yaml): continue it with pql train "
                          f"resume={out}, or choose another out=")


def _train_help() -> str:
    from pql.algos import owners  # here: the registry imports torch, which only this help needs

    lines = ["keys (KEY=VALUE; nested keys are dotted, e.g. algo.batch_size=4096); an algo.* key is read by every",
             "algorithm unless it names its owners:", ""]
    for key, default, meaning in describe():
        shown = list(default) if isinstance(default, tuple) else default
        owned = owners(key)
        lines.append(f"  {key} (default: {shown}" + (f"; {', '.join(owned)} only)" if owned else ")"))
        lines.extend(textwrap.wrap(meaning, 76, initial_indent="      ", subsequent_indent="      "))
    lines += ["", "Task presets (pql/presets.yaml) override the defaults above; your KEY=VALUE always wins.",
              "Resume a run: pql train resume=RUN_DIR [max_time_s=...] [max_env_steps=...]."]
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose epilog may be written only when its help is shown (``pql train``'s lists the
    keys of every registered algorithm, which needs the registry)."""

    def __init__(self, *args: Any, lazy_epilog: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_epilog = lazy_epilog

    def format_help(self) -> str:
        """The help, its epilog written now."""
        if self.lazy_epilog is not None:
            self.epilog = self.lazy_epilog()
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    """The ``pql`` command line: train, export, ablate, status and report."""
    parser = argparse.ArgumentParser(prog="pql", description="Parallel Q-Learning benchmarking suite.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train = sub.add_parser("train", help="train one run", formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="Train PQL / PQL-D on a batched simulator; writes a run directory with "
                                       "config.yaml, metrics.csv, status.json and checkpoint.pt.",
                           lazy_epilog=_train_help)
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    export = sub.add_parser("export", help="write RUN_DIR/policy.pt, a TorchScript policy in env units",
                            description="Export the run's policy: raw observations [B, D] -> actions [B, A] "
                                        "in the environment's own units, as TorchScript.")
    export.add_argument("run_dir", help="a run directory with checkpoint.pt")
    export.add_argument("--out", default=None, help="output path (default RUN_DIR/policy.pt)")

    _add_ablate(sub)

    status = sub.add_parser("status", help="done / running / failed / pending counts of a study",
                            description="Read a study's run directories and report their states and the errors "
                                        "of failed runs.")
    _study_args(status)
    _by_arg(status, "after the report, count the runs per value of FIELD and state")

    _add_report(sub)
    return parser


def _add_ablate(sub: Any) -> None:
    """``pql ablate``'s options."""
    ablate = sub.add_parser("ablate", help="run a study's matrix of cells (idempotent)",
                            description="Expand a study spec (ablations/*.yaml) into cells x seeds and run what is "
                                        "missing: finished runs are kept, interrupted ones (Ctrl-C, SIGTERM, kill -9, "
                                        "preemption) resume from their checkpoint, corrupt ones are redone, failed "
                                        "ones only with --retry-failed. Cells another pql ablate (or SLURM job) is "
                                        "running are left to it. Ctrl-C or SIGTERM: the running cells checkpoint "
                                        "and stop; run the same command again to resume them.")
    _study_args(ablate)
    ablate.add_argument("--launcher", choices=("local", "slurm", "debug"), default="local",
                        help="local: a pool of processes here; slurm: a submitit job array per study; "
                             "debug: in this process (default: local)")
    ablate.add_argument("--jobs", type=int, default=1,
                        help="local launcher: runs at once; each gets cpus/jobs torch threads and, with GPUs, "
                             "GPUs of its own (CUDA_VISIBLE_DEVICES). Keep 1 for wall-clock studies on a small "
                             "machine (default: 1)")
    ablate.add_argument("--cluster", default=None,
                        help="slurm launcher: cluster profile YAML (partition, time, gres per gpu model) "
                             "(default: clusters/default.yaml beside the spec, e.g. ablations/clusters/default.yaml)")
    ablate.add_argument("--wait", action="store_true", help="slurm launcher: block until every task ended")
    ablate.add_argument("--dry-run", action="store_true",
                        help="print the cells, what would run, the memory each cell will need on each device "
                             "(with a warning for a cell that does not fit) and, for slurm, the sbatch scripts; "
                             "run nothing")
    ablate.add_argument("--retry-failed", action="store_true",
                        help="run failed cells again: a run that failed resumably (a worker killed by a signal or "
                             "the out-of-memory killer, or stopped by the watchdog: status.json resumable: true) "
                             "resumes from its last checkpoint, any other (NaN/inf loss, an error) starts afresh; "
                             "interrupted cells always resume by themselves")
    ablate.add_argument("--restart", action="store_true",
                        help="the cells this invocation runs (interrupted, stale claims, failed with "
                             "--retry-failed) start from step 0 instead of resuming from their checkpoints")
    ablate.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_report(sub: Any) -> None:
    """``pql report``'s options."""
    report = sub.add_parser("report", help="summary table, figures and markdown report of a study",
                            description="Aggregate the finished runs that the study's index "
                                        "(results/STUDY/index-PROFILE.csv, written by pql ablate) lists, each read "
                                        "from its own config.yaml, status.json and manifest.json (without an index: "
                                        "the runs of the spec's expansion, and the report says so). Curves on common "
                                        "wall-clock and env-step grids; mean, median, IQM, 95% bootstrap intervals "
                                        "over seeds; time and steps to a return threshold. Writes "
                                        "results/STUDY/summary-PROFILE.csv, results/STUDY/per_run-PROFILE.csv (with "
                                        "each run's commit, torch version, host and devices), per task the figure "
                                        f"kinds the spec's 'figures' lists ({', '.join(FIGURE_KINDS)}; default "
                                        "curves) as plots/STUDY/*.png|pdf, and plots/STUDY/README-PROFILE.md.")
    _study_args(report)
    report.add_argument("--plots", default="plots", help="figures root (default: plots)")
    report.add_argument("--threshold", type=float, default=None,
                        help="return counted as solved for time-to-threshold (default: the spec's "
                             "figure.threshold, else the task's in pql/presets.yaml 'thresholds', such as -250 for "
                             "classic/pendulum)")
    _by_arg(report, "split each cell's line (and its summary row) by the value of FIELD its runs recorded, "
                    "labelled ' [value]'; every output file name gets -by-FIELD")
    report.add_argument("--published", action="append", default=[], metavar="LABEL=CSV",
                        help="draw a published curve beside the runs on the wall-clock panel of the curves figure "
                             "and list what it reaches in the report (repeatable; every task of the study). CSV: "
                             "first column the x in seconds of training, one column per run, empty cells where a "
                             "run has no value, e.g. cvoelcker/reppo's results/time/CartpoleSwingup_sac_brax_full.csv")


def _by_arg(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--by", metavar="FIELD", default=None,
                        help=f"{what}. FIELD: a dotted field of the runs' manifest.json, e.g. devices.v_learner, "
                             "git.commit, packages.torch, cpu, host, gpus.0.name (runs from before manifests: "
                             "host and devices from status.json; missing values: unknown)")


def _study_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="study spec, e.g. ablations/envs.yaml")
    parser.add_argument("--stale-after", type=float, default=ClaimRule.stale_after_s, metavar="S",
                        help="a run that status.json says is running on another host, whose lock is not seen held "
                             "here and whose SLURM job (if any) cannot be asked, counts as dead once its claim "
                             "(status.json 'updated', renewed at every metrics row and checkpoint) is older than "
                             "S seconds; it is then resumed. On this host the run's lock decides, never the age "
                             f"(default: {ClaimRule.stale_after_s:g})")
    parser.add_argument("--take-over", action="store_true",
                        help="take over every running claim from another host at once, whatever its age (e.g. "
                             "results copied from a machine whose runs were killed)")
    parser.add_argument("--profile", default="quick",
                        help="profile of the spec: quick (embedded simulator, minutes on a CPU), playground (MuJoCo "
                             "Playground physics, CPU or GPU), paper (the paper's Isaac Gym tasks and budgets, "
                             "for GPUs) (default: quick)")
    parser.add_argument("--results", default="results", help="results root (default: results)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides applied to every cell (give the same ones to status as to ablate)")


def main(argv: list[str] | None = None) -> int:
    """Run the ``pql`` command in ``argv``; returns its exit code (2: a bad value or key, named)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # KEY=VALUE words may follow options
    stray = [word for word in extra if word.startswith("-") or "=" not in word or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        if args.command == "train":
            # the simulator first: the keys are checked against the algorithms' registry, which imports torch
            words = (w.partition("=") for w in args.overrides)
            preload_simulator(next((value for key, _, value in words if key.strip() == "task"), ""))
            overrides = parse_overrides(args.overrides)
            from pql.training.failures import failure_recorded
            from pql.training.run import resolve, run_training

            _refuse_a_finished_out(overrides)  # before anything records a failure in it
            with failure_recorded(overrides.get("resume") or overrides.get("out")):
                cfg = resolve(overrides)
            with failure_recorded(cfg.out):
                if cfg.check_memory:
                    from pql.ablate.memory_check import check_fits

                    check_fits(cfg)
                run_dir = run_training(cfg)
            print(f"run finished: {run_dir.path}")
        elif args.command == "report":
            return _report_command(args)
        elif args.command in ("ablate", "status"):
            return _study_command(args)
        elif args.command == "export":
            from pql.training.export import export_policy

            print(f"wrote {export_policy(args.run_dir, args.out)}")
    except ConfigError as err:
        print(f"pql: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"pql: error: {err}", file=sys.stderr)
        return 2
    except RunInterrupted as err:
        print(f"pql: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("pql: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the run directory's status.json has the traceback
        print(f"pql: run failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


def command() -> None:
    """The ``pql`` console command: :func:`main` on ``sys.argv``, then the process ends (also after
    argparse's own exits: ``--help``, a usage error)."""
    from pql.exiting import end_process

    try:
        code: int | str | None = main()
    except SystemExit as exit_:
        code = exit_.code
    end_process(code)


def _report_command(args: argparse.Namespace) -> int:
    from pql.report.published import parse_published
    from pql.report.study import report_study

    published = tuple(parse_published(arg) for arg in args.published)
    report = report_study(args.spec, args.profile, args.results, args.plots, parse_overrides(args.overrides),
                          args.threshold, by=args.by, published=published)
    for path in [*report.figures, report.markdown, *report.tables]:
        print(f"wrote {path}")
    if report.missing:
        print(f"{len(report.missing)} runs missing or failed (listed in {report.markdown})")
    return 0


def _study_command(args: argparse.Namespace) -> int:
    """``pql ablate`` and ``pql status``: plan the study, then report its states, or print the plan and run it."""
    from pql.ablate.launchers import DebugLauncher, LocalLauncher
    from pql.ablate.runner import describe_plan, plan_study, run_study, status_report
    from pql.ablate.slurm_launcher import ClusterProfile, SlurmLauncher, array_groups
    from pql.report.provenance import check_field

    overrides = parse_overrides(args.overrides)
    by = getattr(args, "by", None)
    if by:
        check_field(by)
    slurm = getattr(args, "launcher", None) == "slurm"
    running = args.command == "ablate" and not args.dry_run
    plan = plan_study(args.spec, args.profile, overrides, args.results,
                      retry_failed=getattr(args, "retry_failed", False), check_local_gpu=not slurm, claim=running,
                      claim_rule=ClaimRule(args.stale_after, args.take_over), restart=getattr(args, "restart", False))
    if args.command == "status":
        _print_status(plan, by)
        return 0
    try:
        if slurm:
            profile, source = (ClusterProfile.load(args.cluster), args.cluster) if args.cluster \
                else ClusterProfile.default_for(args.spec)
        print(describe_plan(plan))
        if plan.to_run:
            _warn_if_dirty()
        if args.dry_run:
            _print_memory(plan, profile.mem_gb if slurm else None, slurm)
        if plan.elsewhere:
            print(f"{len(plan.elsewhere)} cell(s) are being run by another pql ablate or SLURM job: left to it "
                  f"(pql status {args.spec} follows them)")
        if slurm:
            print(f"cluster profile: {source}")
            launcher: LocalLauncher | DebugLauncher | SlurmLauncher = SlurmLauncher(
                profile, plan.store.path / "slurm", f"pql-{plan.study.name}", wait=args.wait)
        elif args.launcher == "debug":
            launcher = DebugLauncher()
        else:
            launcher = LocalLauncher(args.jobs)
        if args.dry_run:
            if isinstance(launcher, SlurmLauncher):
                for (gpu_model, gpus), cells in array_groups(plan.to_run).items():
                    print(f"\n# sbatch script of the array for gpu_model={gpu_model}, {profile.gpus(gpus)} GPU(s) "
                          f"per task ({len(cells)} tasks)")
                    print(launcher.sbatch_script(gpu_model, len(cells), gpus))
            return 0
    except BaseException:
        plan.release()
        raise
    try:
        problems = run_study(plan, launcher, progress=not args.no_progress)
    except RunInterrupted:
        print(status_report(plan.study, plan.store, plan.skipped))
        raise
    print(status_report(plan.study, plan.store, plan.skipped))
    for line in problems:
        print(f"pql: {line}", file=sys.stderr)
    return 1 if problems else 0


def _print_status(plan: Plan, by: str | None) -> None:
    """``pql status``: the study's states and failures; with ``by``, the runs counted per value of that field."""
    from pql.ablate.runner import status_report, unique_cells
    from pql.report.provenance import by_table, field_text, lookup, run_facts
    from pql.store.states import CELL_STATES

    print(status_report(plan.study, plan.store, plan.skipped))
    if by:
        runs = [(field_text(lookup(run_facts(plan.store.run_path(cell)), by)), plan.states[cell.run_id].state)
                for cell in unique_cells(plan.study)]
        print(by_table(by, runs, CELL_STATES))


def _warn_if_dirty() -> None:
    """Say on stderr which tracked files differ from the commit: the runs' manifests will record them."""
    from pql.store.manifest import git_state

    state = git_state()
    if state and state["dirty"]:
        shown = ", ".join(state["changed"][:5]) + (" ..." if len(state["changed"]) > 5 else "")
        print(f"pql: warning: the checkout has uncommitted changes ({shown}); the runs' manifest.json record "
              f"them (git.changed, git.diff_sha256), but the code they ran cannot be checked out: commit first, "
              f"and leave tracked files alone while the study runs", file=sys.stderr)


def _print_memory(plan: Plan, slurm_mem_gb: float | None, slurm: bool) -> None:
    """The dry run's memory estimate per cell; a warning on stderr for each cell that does not fit. A cell's
    host memory is this machine's, or on SLURM the cluster profile's ``mem_gb``; a GPU's is that of its
    ``gpu_model``, or (not on SLURM) that of the GPU here."""
    from pql.ablate.memory import device_capacity
    from pql.ablate.runner import describe_memory
    from pql.store.manifest import memory_gib

    host_gib = slurm_mem_gb if slurm else memory_gib()
    text, warnings = describe_memory(
        plan, lambda device, gpu_model: device_capacity(device, gpu_model, host_gib, local_gpus=not slurm))
    print(text)
    for line in warnings:
        print(f"pql: warning: {line}", file=sys.stderr)


if __name__ == "__main__":
    command()
