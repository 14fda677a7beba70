"""The end-to-end job, on top of every area: train -> calibrate -> evaluate -> register.

`cimcoder train CONFIG` fits one model (the PLM-ICD transformer or a baseline, by the
config's `model.name`) and tracks it in MLflow. `cimcoder run CONFIG` is the main job of
the README: it also builds the offline encoder when the config needs it, calibrates the
decision policy, evaluates, registers the model (alias `champion` when it beats the
holder) and, with `--baselines`, trains and evaluates the baselines through the same
harness and prints the comparison table. `cimcoder compare RUN...` prints that table for
runs already trained.

This module sits above the areas (it may import all of them); the areas never import it.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cimcoder.errors import CimcoderError

if TYPE_CHECKING:
    from cimcoder.eval.report import Report

logger = logging.getLogger(__name__)

TRANSFORMER_MODELS = frozenset({"plm_icd"})
DEFAULT_PRETRAIN_CONFIG = Path("configs/pretrain/mini.yaml")
PRETRAIN_OVERRIDES: tuple[str, ...] = ()  # tests shrink the pretraining
COMPARE_COLUMNS = (
    ("map", "MAP"),
    ("micro_f1", "micro-F1"),
    ("macro_f1", "macro-F1"),
    ("p@5", "P@5"),
    ("recall_frequent", "R frequent"),
    ("recall_rare", "R rare"),
    ("recall_unseen", "R unseen"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `train`, `run` and `compare`."""
    p = subparsers.add_parser(
        "train",
        help="fine-tune a model (transformer or baseline) from a YAML config",
        description="Train the model of CONFIG (configs/<dataset>/<model>.yaml) with dotted "
        "overrides such as training.lr=3e-5, tracked in MLflow. Resumes an interrupted run "
        "from its last checkpoint.",
    )
    _add_config_args(p)
    p.add_argument("--no-resume", action="store_true", help="start over, ignoring checkpoints")
    p.add_argument(
        "--nproc", type=_positive_int, default=1, metavar="N",
        help="train on N processes (torch.distributed: one per GPU, or CPU processes with gloo); "
        "training.batch_size stays the global batch, each process takes 1/N of it (default 1)",
    )
    p.set_defaults(handler=_train_command)

    p = subparsers.add_parser(
        "run",
        help="main job: [pretrain] -> train -> calibrate -> evaluate -> register",
        description="The whole job on one config: builds the offline French encoder if the "
        "config uses it and it is missing, trains, fits the decision policy, evaluates with "
        "the automation report, and registers the model in MLflow (alias champion when it "
        "beats the current holder).",
    )
    _add_config_args(p)
    p.add_argument("--no-resume", action="store_true", help="start over, ignoring checkpoints")
    p.add_argument(
        "--target-precision",
        type=float,
        default=0.95,
        help="precision the DIM requires of auto-coded codes (default 0.95)",
    )
    p.add_argument(
        "--baselines",
        nargs="*",
        default=[],
        metavar="CONFIG",
        help="baseline configs to train and evaluate on the same splits, for the comparison",
    )
    p.add_argument("--no-register", action="store_true", help="do not register in MLflow")
    p.add_argument("--model-name", default="cimcoder", help="registered model name")
    p.set_defaults(handler=_run_command)

    p = subparsers.add_parser(
        "compare",
        help="compare evaluated runs on one data set (MAP, F1, P@5, recall by band)",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders")
    p.add_argument("--data", default="codiesp-fr/dev", help="data set (default codiesp-fr/dev)")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.set_defaults(handler=_compare_command)

    p = subparsers.add_parser(
        "promote",
        help="compare a run with the champion on the same data; register it and move the "
        "alias only if it is better",
    )
    p.add_argument("run", metavar="RUN", help="challenger run folder")
    p.add_argument("--data", default="codiesp-fr/dev", help="data both are measured on")
    p.add_argument("--metric", default="map", choices=[k for k, _ in COMPARE_COLUMNS])
    p.add_argument("--name", default="cimcoder", help="registered model name")
    p.add_argument("--alias", default="champion", help="alias to move")
    p.add_argument("--force", action="store_true", help="promote even if not better")
    p.set_defaults(handler=_promote_command)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of processes, got {text}")
    return value


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help="YAML run config")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides (training.lr=3e-5)"
    )


# --------------------------------------------------------------------------- steps


def train_run(
    config_path: str | Path,
    overrides: Sequence[str] = (),
    *,
    resume: bool = True,
    tracker: Any = None,
    nproc: int = 1,
) -> Path:
    """Train the config's model (transformer or baseline) and return its run folder;
    `nproc` > 1 trains a transformer on that many processes."""
    from cimcoder.training import load_config

    config = load_config(config_path, list(overrides))
    if nproc > 1 and config.model.name not in TRANSFORMER_MODELS:
        raise CimcoderError(f"--nproc: {config.model.name} is fitted in one process")
    if config.model.name in TRANSFORMER_MODELS:
        ensure_encoder(config.model.encoder)
        from cimcoder.eval.metrics import mean_average_precision
        from cimcoder.training import train

        run_dir = train(
            config, validation_metric=mean_average_precision, tracker=tracker, resume=resume,
            nproc=nproc,
        )
    else:
        from cimcoder.training.baselines import fit_baseline

        run_dir = fit_baseline(config, tracker=tracker)
    return Path(run_dir)


def ensure_encoder(encoder: str) -> None:
    """Pretrain the offline default encoder when a config points at it and it is missing.

    Any other encoder (camembert-bio, DrBERT... in a local folder) is the user's to provide.
    """
    from cimcoder.training.config import DEFAULT_ENCODER

    path = Path(encoder)
    if (path / "config.json").is_file():
        return
    if Path(encoder) != Path(DEFAULT_ENCODER):
        raise CimcoderError(
            f"encoder {encoder!r} not found: give a local folder holding a Hugging Face "
            "checkpoint (config.json, weights, tokenizer), or build the offline default "
            "with `cimcoder pretrain`"
        )
    logger.info("offline encoder %s is missing: pretraining it first", encoder)
    from cimcoder.training.config import load_pretrain_config
    from cimcoder.training.pretrain import pretrain

    pretrain(load_pretrain_config(DEFAULT_PRETRAIN_CONFIG, list(PRETRAIN_OVERRIDES)), output_dir=path)


def _start_tracker(config_path: str | Path, overrides: Sequence[str]) -> Any:
    from cimcoder.training import load_config
    from cimcoder.training.tracking import RunTracker

    config = load_config(config_path, list(overrides))
    return RunTracker.start(
        config.experiment_name,
        config.run_name,
        config.tracking.tracking_uri,
        tags={"cimcoder.config": str(config_path), "cimcoder.model": config.model.name},
    )


def _tracked(config_path: str | Path, overrides: Sequence[str], fn: Any) -> Any:
    tracker = _start_tracker(config_path, overrides)
    try:
        result = fn(tracker)
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
    if tracker.fell_back:
        logger.warning("the run was kept in the local MLflow store at %s", tracker.tracking_uri)
    return result


def _train_command(args: argparse.Namespace) -> int:
    run_dir = _tracked(
        args.config,
        args.overrides,
        lambda tracker: train_run(
            args.config, args.overrides, resume=not args.no_resume, tracker=tracker,
            nproc=args.nproc,
        ),
    )
    print(f"run folder: {run_dir}")
    return 0


def _evaluate_model(
    run_dir: Path, data: str, tracker: Any, scorer: Any = None
) -> Report:
    from cimcoder.eval.runner import evaluate_run

    return evaluate_run(run_dir, data=data, tracker=tracker, scorer=scorer)


def _run_command(args: argparse.Namespace) -> int:
    from cimcoder.training import load_config

    config = load_config(args.config, list(args.overrides))
    dev = config.data.dev or "codiesp-fr/dev"

    def job(tracker: Any) -> tuple[Path, Report, Any]:
        from cimcoder.eval.runner import calibrate_run
        from cimcoder.training import load_scorer

        run_dir = train_run(
            args.config, args.overrides, resume=not args.no_resume, tracker=tracker
        )
        # One loaded scorer for both steps: the dev stays are scored once.
        scorer = load_scorer(run_dir)
        calibrate_run(
            run_dir, target_precision=args.target_precision, tracker=tracker, scorer=scorer
        )
        report = _evaluate_model(run_dir, dev, tracker, scorer)
        registered = None
        if not args.no_register:
            from cimcoder.inference.mlflow_model import register_run_model

            # The alias moves below, once every model is measured on the same stays.
            registered = register_run_model(
                run_dir, tracker, name=args.model_name, promote=False
            )
        return run_dir, report, registered

    run_dir, report, registered = _tracked(args.config, args.overrides, job)
    rows = {str(run_dir): report}
    for baseline in args.baselines:

        def baseline_job(tracker: Any, cfg: str = baseline) -> tuple[Path, Report]:
            from cimcoder.eval.runner import calibrate_run
            from cimcoder.training import load_scorer

            b_dir = train_run(cfg, tracker=tracker)
            scorer = load_scorer(b_dir)
            calibrate_run(b_dir, target_precision=args.target_precision, tracker=tracker, scorer=scorer)
            return b_dir, _evaluate_model(b_dir, dev, tracker, scorer)

        b_dir, b_report = _tracked(baseline, [], baseline_job)
        rows[str(b_dir)] = b_report

    print(f"\nrun folder: {run_dir}")
    print(format_comparison(rows, dev))
    _print_automation(report)
    if registered is not None:
        print(f"registered: {registered.model_uri}")
        best = best_run(rows)
        # The reports were just computed on these stays, and the main model is registered
        # already: promotion reuses both instead of scoring and logging the model again.
        _, promoted, champion = promote_run(
            Path(best), dev, name=args.model_name, report=rows[best],
            registered=registered if best == str(run_dir) else None,
        )
        if promoted and champion is not None:
            print(f"champion: {Path(best).name} measures best on {dev} ({champion.model_uri} is "
                  f"now @{champion.alias})")
        else:
            print(f"champion unchanged: {Path(best).name}, the best of this run, does not beat "
                  "the current @champion on the same stays")
    return 0


def best_run(rows: dict[str, Report], metric: str = "map") -> str:
    """The run whose `metric` is highest, all measured on the same stays."""
    same_stays(rows)
    scored = {run: comparison_row(r)[metric] for run, r in rows.items()}
    return max(scored, key=lambda run: (scored[run] is not None, scored[run] or 0.0))


def same_stays(rows: dict[str, Report]) -> None:
    """Refuse to compare reports measured on different stays.

    `evaluate` never measures a policy on the stays it was fitted on, so two runs calibrated
    differently (one on half A, one on the whole set, say) are measured on different stays.
    """
    measured = {run: r.dataset for run, r in rows.items()}
    if len(set(measured.values())) > 1:
        detail = "; ".join(f"{run}: {d}" for run, d in measured.items())
        raise CimcoderError(
            f"the runs were measured on different stays ({detail}): their policies were fitted "
            "on different parts of the data. Calibrate them the same way (`cimcoder calibrate "
            "RUN`, or the same --data for each) or pass a half both may be measured on (--data NAME#B)."
        )


def _compare_command(args: argparse.Namespace) -> int:
    rows = {run: _evaluate_model(Path(run), args.data, None) for run in args.runs}
    same_stays(rows)
    if args.json:
        print(json.dumps({run: comparison_row(r) for run, r in rows.items()}, indent=2))
    else:
        print(format_comparison(rows, args.data))
    return 0


def promote_run(
    run_dir: Path,
    data: str,
    *,
    metric: str = "map",
    name: str = "cimcoder",
    alias: str = "champion",
    force: bool = False,
    report: Report | None = None,
    registered: Any = None,
) -> tuple[dict[str, Report], bool, Any]:
    """Measure the challenger and the alias holder on `data`; register and promote if better.

    Both are evaluated by the same code on the same stays, so the decision never rests on
    figures each model computed on its own validation data. `report`: the challenger's
    evaluation on `data`, when just computed; `registered`: its registered version, which then
    gets the alias instead of a new version.
    """
    from cimcoder.training.tracking import (
        RunTracker,
        TrackingError,
        load_run_dir_from_uri,
        set_alias,
    )

    rows = {str(run_dir): report if report is not None else _evaluate_model(run_dir, data, None)}
    champion_value: float | None = None
    try:
        champion_dir = load_run_dir_from_uri(f"models:/{name}@{alias}")
    except TrackingError as exc:
        logger.info("no current @%s (%s): the challenger is promoted if it evaluates", alias, exc)
    else:
        champion_report = _evaluate_model(champion_dir, data, None)
        rows[f"{alias} ({champion_dir.name})"] = champion_report
        champion_value = comparison_row(champion_report)[metric]
    same_stays(rows)
    challenger_value = comparison_row(rows[str(run_dir)])[metric]
    better = challenger_value is not None and (
        champion_value is None or challenger_value > champion_value
    )
    if (better or force) and registered is not None:
        return rows, better, set_alias(registered, alias)
    registered = None
    if better or force:
        from cimcoder.inference.mlflow_model import register_run_model

        tracker = RunTracker.start(name, f"promote-{run_dir.name}", tags={"cimcoder.data": data})
        try:
            registered = register_run_model(run_dir, tracker, name=name, alias=alias, promote=True)
            tracker.log_metrics({f"promotion.{metric}": challenger_value or 0.0})
        except BaseException:
            tracker.end("FAILED")
            raise
        tracker.end("FINISHED")
    return rows, better, registered


def _promote_command(args: argparse.Namespace) -> int:
    rows, better, registered = promote_run(
        Path(args.run), args.data, metric=args.metric, name=args.name, alias=args.alias,
        force=args.force,
    )
    print(format_comparison(rows, args.data))
    if registered is not None:
        why = "better" if better else "forced"
        print(f"promoted ({why}): {registered.model_uri} is now @{registered.alias}")
        return 0
    print(f"not promoted: {args.metric} is not better than @{args.alias} on {args.data}")
    return 1


# --------------------------------------------------------------------------- output


def comparison_row(report: Report) -> dict[str, float | None]:
    """The comparison figures of one evaluation report (see `cimcoder.eval.runner`)."""
    m = report.metrics
    figures: dict[str, float | None] = {
        "map": m.map, "micro_f1": m.micro_f1, "macro_f1": m.macro_f1, "p@5": m.p_at_5,
        **{f"recall_{band}": b.recall for band, b in report.bands.items()},
    }
    return {key: figures.get(key) for key, _ in COMPARE_COLUMNS}


def format_comparison(rows: dict[str, Report], data: str) -> str:
    # The stays actually measured: half B when the policies were fitted on half A.
    measured = sorted({r.dataset or data for r in rows.values()})
    header = "| model | " + " | ".join(title for _, title in COMPARE_COLUMNS) + " |"
    lines = [
        f"Comparison on {', '.join(measured)}",
        header,
        "|" + "---|" * (len(COMPARE_COLUMNS) + 1),
    ]
    for run, report in rows.items():
        row = comparison_row(report)
        cells = ["—" if row[k] is None else f"{row[k]:.3f}" for k, _ in COMPARE_COLUMNS]
        lines.append(f"| {Path(run).name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _print_automation(report: Report) -> None:
    h = report.headline
    print(f"\nAutomation on {report.dataset} (goal: 90% of diagnoses auto-coded)")
    if h.statement_fr:
        print(h.statement_fr)
    figures = (
        ("target precision", h.target_precision),
        ("measured auto precision", h.auto_precision),
        ("share of true codes auto-coded", h.automation_rate),
        ("stays fully auto-coded", h.share_stays_fully_auto_coded),
        ("codes to review per stay", h.review_per_stay_mean),
        ("true codes found by auto + review", h.recall_auto_or_review),
    )
    for title, value in figures:
        if value is not None:
            print(f"  {title:<36} {value:.3f}")
    if report.folder:
        print(f"  report (HTML + JSON): {report.folder}")
