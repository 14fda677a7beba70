"""`cimcoder review ...`: fill the review queue from `cimcoder predict`, export what the
coders validated (to retrain), export the audit trail, print the monitoring report."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cimcoder.serving.review.store import ReviewStore
    from cimcoder.training.corpora.schema import Corpus

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `review` command group."""
    review = subparsers.add_parser(
        "review",
        help="DIM review store: import predictions, export validated stays and the audit trail",
        description="DIM review workflow: the queue the review page (/review) works on.",
    )
    commands = review.add_subparsers(dest="review_command", metavar="ACTION", required=True)

    def with_db(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument(
            "--database-url",
            help="SQLAlchemy URL of the review store (default: CIMCODER_DATABASE_URL, else "
            "the SQLite file of `cimcoder serve`)",
        )
        return parser

    imp = with_db(commands.add_parser("import", help="queue the stays of a predictions JSONL"))
    imp.add_argument("--predictions", required=True, type=Path, help="`cimcoder predict` output")
    imp.add_argument(
        "--texts",
        required=True,
        help="the scored texts: folder of .txt, JSONL/Parquet with id and text, or a data set "
        "name (codiesp-fr/dev)",
    )
    imp.add_argument("--unit", help="unité médicale to record for stays that do not name one")
    imp.add_argument("--qc-rate", type=float, help="set the QC sample rate first (0-1)")
    imp.set_defaults(handler=_import)

    exp = with_db(commands.add_parser("export", help="validated stays as corpora JSONL"))
    exp.add_argument("--output", required=True, type=Path, help="JSONL file to write")
    exp.add_argument(
        "--include",
        help="also write the stays of this coded data set (e.g. codiesp-fr/train) first, so "
        "that the file retrains on base data + feedback (a validated stay replaces its base copy)",
    )
    exp.set_defaults(handler=_export)

    aud = with_db(
        commands.add_parser(
            "audit", help="export the audit trail (CSV or JSONL), or verify its hash chain"
        )
    )
    aud.add_argument("--output", type=Path, help=".csv or .jsonl file")
    aud.add_argument("--format", choices=("csv", "jsonl"), help="default: from the extension")
    aud.add_argument(
        "--verify",
        action="store_true",
        help="check the hash chain: exit 0 when intact, 1 naming the first broken event",
    )
    aud.set_defaults(handler=_audit)

    mig = with_db(
        commands.add_parser(
            "migrate",
            help="upgrade the review database schema (run with the account that owns it)",
            description="Bring the schema to this version's newest revision. On PostgreSQL, "
            "run it with the schema owner's account; the service's own account needs no DDL "
            "right (see `cimcoder review grant`) and refuses to start on an outdated schema.",
        )
    )
    mig.set_defaults(handler=_migrate)

    gra = with_db(
        commands.add_parser(
            "grant",
            help="PostgreSQL: give the service's role row access only (no DDL), as the owner",
            description="Grant ROLE SELECT/INSERT/UPDATE/DELETE on the review tables, only "
            "SELECT/INSERT on audit_events, SELECT on alembic_version and USAGE on their "
            "sequences. Run with the owner's --database-url after each migrate; prints the "
            "statements it ran.",
        )
    )
    gra.add_argument("--role", required=True, help="the role the service connects as")
    gra.set_defaults(handler=_grant)

    mon = with_db(commands.add_parser("monitoring", help="print the monitoring report (JSON)"))
    mon.add_argument(
        "--labels", type=Path, help="model run folder or labels.json (code-frequency drift)"
    )
    mon.set_defaults(handler=_monitoring)

    scr = with_db(
        commands.add_parser(
            "scripted",
            help="validate queued stays with the gold codes of a coded data set (end-to-end runs)",
        )
    )
    scr.add_argument("--gold", required=True, help="coded data set: path or name (codiesp-fr/dev)")
    scr.add_argument("--coder", default="codeur-script", help="name recorded in the audit trail")
    scr.set_defaults(handler=_scripted)


def _database_url(args: argparse.Namespace) -> str:
    url: str | None = args.database_url
    if not url:
        from pydantic import ValidationError

        from cimcoder.serving.review.store import ReviewError
        from cimcoder.serving.settings import Settings

        try:
            url = Settings().resolved_database_url()
        except ValidationError as exc:
            raise ReviewError(f"invalid CIMCODER_* settings: {exc.errors()[0]['msg']}") from None
    return url


def _store(args: argparse.Namespace) -> ReviewStore:
    # Imported here, not at module level: `cimcoder --help` and every other command would
    # otherwise load the review web app (FastAPI, SQLAlchemy) just to list this one.
    from cimcoder.serving.review.store import ReviewError, ReviewStore

    url = _database_url(args)
    try:
        return ReviewStore(url)
    except ReviewError:
        raise
    except Exception as exc:  # SQLAlchemy/driver errors: a bad URL or unreachable server
        raise ReviewError(f"cannot open the review store: {type(exc).__name__}: {exc}") from None


def _migrate(args: argparse.Namespace) -> int:
    from cimcoder.serving.review.store import current_revision, head_revision, make_engine

    engine = make_engine(_database_url(args))
    try:
        before = current_revision(engine)
        store = _store(args)
        store.close()
    finally:
        engine.dispose()
    head = head_revision()
    if before == head:
        print(f"review database schema already at revision {head}")
    else:
        print(f"review database schema upgraded from {before or 'empty'} to revision {head}")
    return 0


def _grant(args: argparse.Namespace) -> int:
    from cimcoder.serving.review.grants import grant_service_role
    from cimcoder.serving.review.store import make_engine

    engine = make_engine(_database_url(args))
    try:
        statements = grant_service_role(engine, args.role)
    finally:
        engine.dispose()
    for statement in statements:
        print(statement + ";")
    return 0


def _import(args: argparse.Namespace) -> int:
    from cimcoder.serving.review.ingest import read_predictions, read_texts
    from cimcoder.serving.review.store import ReviewError
    from cimcoder.serving.review.workflow import enqueue, set_qc_rate

    texts = read_texts(args.texts)
    predictions = list(read_predictions(args.predictions))
    missing = [p.id for p in predictions if p.id not in texts]
    if missing:
        raise ReviewError(
            f"{len(missing)} prediction(s) have no text in {args.texts} (e.g. {missing[:5]}): "
            "give the same input as `cimcoder predict --input`"
        )
    store = _store(args)
    default_rate = 0.05 if args.qc_rate is None else args.qc_rate
    created = unchanged = auto = sampled = 0
    with store.session(write=True) as session:
        if args.qc_rate is not None:
            set_qc_rate(session, args.qc_rate, "cli", default_rate)
        for prediction in predictions:
            stay = texts[str(prediction.id)]
            if args.unit and not stay.unit:
                stay = stay.model_copy(update={"unit": args.unit})
            result = enqueue(session, stay, prediction, default_qc_rate=default_rate, actor="cli")
            created += int(result.created)
            unchanged += int(not result.created)
            auto += int(result.auto_coded)
            sampled += int(result.qc_sampled)
    print(
        f"queued {created} stay(s) ({unchanged} already there); auto-coded {auto}, "
        f"of which {sampled} sampled for quality control"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from cimcoder.serving.review.audit import record
    from cimcoder.serving.review.export import export_validated

    base = _load_dataset(args.include).stays if args.include else []
    store = _store(args)
    validated, kept = export_validated(store, args.output, include=base)
    with store.session(write=True) as session:
        record(
            session,
            actor="cli",
            event="export.validated",
            after={"file": args.output.name, "stays": validated},
        )
    extra = f" after {kept} stay(s) of {args.include}" if args.include else ""
    print(f"wrote {validated} validated stay(s){extra} to {args.output}")
    return 0


def _load_dataset(spec: str) -> Corpus:
    """A data set by name or path; `NAME#A` / `NAME#B` selects the evaluation's fixed half."""
    from cimcoder.eval.runner import parse_data_spec, select_half
    from cimcoder.training.corpora import load_dataset

    name, half = parse_data_spec(spec)
    corpus = load_dataset(name)
    return corpus if half is None else corpus.subset(select_half(corpus.stays, half), spec)


def _audit(args: argparse.Namespace) -> int:
    from cimcoder.serving.review.audit import export_audit, record, verify_chain
    from cimcoder.serving.review.store import ReviewError

    if args.output is None and not args.verify:
        raise ReviewError("give --output FILE to export the trail, or --verify to check it")
    store = _store(args)
    if args.verify:
        check = verify_chain(store)
        if not check.intact:
            print(
                f"audit trail BROKEN at event {check.broken_id}: {check.reason} "
                f"({check.events} event(s) before it are intact)"
            )
            return 1
        print(f"audit trail intact: {check.events} event(s), head hash {check.head}")
    if args.output is not None:
        with store.session(write=True) as session:
            record(session, actor="cli", event="audit.exported", after={"file": args.output.name})
        count = export_audit(store, args.output, args.format)
        print(f"wrote {count} audit event(s) to {args.output}")
    return 0


def _monitoring(args: argparse.Namespace) -> int:
    from cimcoder.serving.review.monitoring import compute, load_train_counts
    from cimcoder.serving.review.store import ReviewError

    labels = None
    if args.labels is not None:
        try:
            labels = load_train_counts(args.labels)
        except (OSError, ValueError) as exc:
            raise ReviewError(f"cannot read train counts from {args.labels}: {exc}") from None
    print(json.dumps(compute(_store(args), labels=labels), ensure_ascii=False, indent=2))
    return 0


def _scripted(args: argparse.Namespace) -> int:
    from cimcoder.serving.review.scripted import review_with_gold

    corpus = _load_dataset(args.gold)
    gold = {s.id: [(d.code, d.role) for d in s.diagnoses] for s in corpus.stays}
    summary = review_with_gold(_store(args), gold, args.coder)
    print(
        f"validated {summary.reviewed} stay(s): {summary.accepted} suggestion(s) accepted, "
        f"{summary.rejected} rejected, {summary.added} missed code(s) added "
        f"({summary.codes_not_addable} gold code(s) outside the terminology, "
        f"{summary.dp_changed} gold DP(s) not allowed as DP replaced, "
        f"{summary.dr_dropped} gold DR(s) not allowed next to the DP kept as DAS, "
        f"{summary.skipped_no_gold} stay(s) without gold and {summary.skipped_invalid} "
        "breaking a PMSI rule left in the queue)"
    )
    return 0
