"""The DIM workflow on the store: enqueue scored stays, sample auto-coded ones for quality
control, read the queue and a stay, and save a coder's decisions (idempotent, optimistic).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cimcoder import folds
from cimcoder.inference.schemas import StayPrediction
from cimcoder.serving.review import audit
from cimcoder.serving.review.schemas import ReviewDocumentIn, ReviewIn, StayIn
from cimcoder.serving.review.store import (
    STATUS_LABELS,
    Action,
    Coder,
    Prediction,
    Review,
    ReviewCode,
    ReviewConflict,
    ReviewDocument,
    ReviewError,
    ReviewSetting,
    ReviewStay,
    ReviewStore,
    StayStatus,
    UnknownStay,
    utcnow,
)
from cimcoder.training.corpora.schema import DOCUMENT_SEPARATOR

if TYPE_CHECKING:
    from sqlalchemy import CursorResult

    from cimcoder.terminologies import Restrictions

logger = logging.getLogger(__name__)

QC_RATE_KEY = "qc_rate"
# Rejected candidates kept per stay (best first): enough for a coder to rescue a missed code
# and for score monitoring; the full ranking stays in the predictions JSONL.
MAX_REJECTED_STORED = 30
SYSTEM_ACTOR = "system"
CodedRole = Literal["DP", "DR", "DAS"]


class InvalidReview(ReviewError):
    """A save that breaks a coding rule (unknown code, missing DP, undecided suggestion)."""


# -- quality-control sampling -----------------------------------------------------------


def qc_draw(stay_id: str) -> float:
    """A uniform number in [0, 1) fixed by the stay id: the same stay is always drawn alike."""
    return folds.uniform("cimcoder-qc", stay_id)


def qc_rate(session: Session, default: float) -> float:
    row = session.get(ReviewSetting, QC_RATE_KEY)
    if row is None:
        return default
    return float(row.value["rate"])


def set_qc_rate(session: Session, rate: float, actor: str, default: float) -> float:
    """Set the QC rate; auto-coded stays not yet reviewed are re-drawn against it."""
    if not 0.0 <= rate <= 1.0:
        raise ReviewError(f"the QC rate must be between 0 and 1, not {rate}")
    before = qc_rate(session, default)
    row = session.get(ReviewSetting, QC_RATE_KEY)
    if row is None:
        session.add(ReviewSetting(key=QC_RATE_KEY, value={"rate": rate}, updated_by=actor))
    else:
        row.value = {"rate": rate}
        row.updated_at = utcnow()
        row.updated_by = actor
    # Stays still untouched follow the new rate; reviewed ones keep their history.
    pending = session.scalars(
        select(ReviewStay).where(
            ReviewStay.auto_coded.is_(True),
            ReviewStay.status.in_([StayStatus.AUTO_CODED, StayStatus.TO_CODE]),
            ReviewStay.version == 1,
        )
    ).all()
    moved = 0
    for stay in pending:
        sampled = qc_draw(stay.id) < rate
        if sampled != stay.qc_sampled:
            stay.qc_sampled = sampled
            stay.status = StayStatus.TO_CODE if sampled else StayStatus.AUTO_CODED
            moved += 1
    audit.record(
        session,
        actor=actor,
        event="settings.qc_rate",
        before={"qc_rate": before},
        after={"qc_rate": rate, "stays_rerouted": moved},
    )
    return rate


# -- enqueue ----------------------------------------------------------------------------

EnqueueOrigin = Literal["scored", "imported"]


def joined_text(documents: Sequence[ReviewDocumentIn] | Sequence[ReviewDocument]) -> str:
    """The stay's text as stored, shown and scored: its documents joined with a blank line."""
    return DOCUMENT_SEPARATOR.join(doc.text for doc in documents)


@dataclass(frozen=True)
class Enqueued:
    id: str
    status: str
    auto_coded: bool
    qc_sampled: bool
    created: bool


def input_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _as_stay_in(stay: Any) -> StayIn:
    if isinstance(stay, StayIn):
        return stay
    if isinstance(stay, dict):
        return StayIn.model_validate(stay)
    # A corpora `Stay` (cimcoder.training.corpora.schema.Stay).
    context = getattr(stay, "context", None)
    return StayIn(
        id=stay.id,
        patient_id=stay.patient_id,
        unit=context.unit if context is not None else None,
        # A corpora stay has no date of its own: its latest dated document's (discharge letter).
        date=max((doc.date for doc in stay.documents if doc.date is not None), default=None),
        documents=[
            ReviewDocumentIn(text=doc.text, doc_type=doc.doc_type, date=doc.date)
            for doc in stay.documents
        ],
    )


def _as_prediction(prediction: Any) -> StayPrediction:
    if isinstance(prediction, StayPrediction):
        return prediction
    if isinstance(prediction, dict):
        return StayPrediction.model_validate(prediction)
    return StayPrediction.model_validate(prediction.model_dump())


def is_auto_coded(prediction: StayPrediction) -> bool:
    """Every code the model keeps is 'auto' (none left for a coder), and it keeps one."""
    kept = [c for c in prediction.codes if c.decision != "reject"]
    return bool(kept) and all(c.decision == "auto" for c in kept)


def _proposed(prediction: StayPrediction, role: str) -> str | None:
    """The code the model proposed, and coded automatically, in `role` (DP or DR)."""
    return next((c.code for c in prediction.codes if c.role == role and c.decision == "auto"), None)


def enqueue(
    session: Session,
    stay: Any,
    prediction: Any,
    *,
    default_qc_rate: float = 0.05,
    actor: str = SYSTEM_ACTOR,
    origin: EnqueueOrigin = "imported",
) -> Enqueued:
    """Put a scored stay in the queue (in the caller's transaction).

    `stay` is a `StayIn`, a dict of it, or a corpora `Stay`; `prediction` a `StayPrediction`
    (or its JSON dict). A stay already queued with the same text and model is left as is;
    the same id with another text or model is refused (`ReviewConflict`). `origin` goes to
    the audit trail: "scored" (the service scored it on POST /v1/review/stays) or "imported"
    (a predictions file, `cimcoder review import`, or a script on the store).
    """
    stay_in = _as_stay_in(stay)
    pred = _as_prediction(prediction)
    if pred.id is not None and pred.id != stay_in.id:
        raise ReviewError(f"prediction id {pred.id!r} does not match stay id {stay_in.id!r}")
    documents = stay_in.document_list()
    text = joined_text(documents)
    digest = input_hash(text)
    for code in pred.codes:
        for span in code.evidence:
            if span.end > len(text) or span.start > span.end:
                raise ReviewError(
                    f"stay {stay_in.id}: evidence {span.start}-{span.end} of {code.code} lies "
                    f"outside its text ({len(text)} chars): was it scored on another text?"
                )

    existing = session.get(ReviewStay, stay_in.id)
    if existing is not None:
        if existing.input_hash == digest and existing.model_version == pred.model.version:
            return Enqueued(
                existing.id, existing.status, existing.auto_coded, existing.qc_sampled, False
            )
        raise ReviewConflict(
            f"stay {stay_in.id} is already in the review store with another text or model"
        )

    auto = is_auto_coded(pred)
    rate = qc_rate(session, default_qc_rate)
    sampled = auto and qc_draw(stay_in.id) < rate
    status = StayStatus.AUTO_CODED if auto and not sampled else StayStatus.TO_CODE
    # An auto-coded stay is coded as the model proposed it: its DP, and its DR when the DP is
    # a care code (Z51.1 chemotherapy session: DR = the cancer treated).
    dp = _proposed(pred, "DP") if auto else None
    dr = _proposed(pred, "DR") if dp is not None else None
    now = utcnow()
    row = ReviewStay(
        id=stay_in.id,
        patient_id=stay_in.patient_id,
        unit=stay_in.unit,
        stay_date=stay_in.date or next((d.date for d in documents if d.date), None),
        status=status,
        auto_coded=auto,
        qc_sampled=sampled,
        version=1,
        dp_code=dp,
        dr_code=dr,
        terminology=pred.model.terminology,
        model_version=pred.model.version,
        thresholds_version=pred.model.thresholds_version,
        terminology_edition=pred.model.edition,
        input_hash=digest,
        created_at=now,
        updated_at=now,
    )
    row.documents = [
        ReviewDocument(position=i, doc_type=d.doc_type, doc_date=d.date, text=d.text)
        for i, d in enumerate(documents)
    ]
    rejected = [c for c in pred.codes if c.decision == "reject"][:MAX_REJECTED_STORED]
    stored = [c for c in pred.codes if c.decision != "reject" or c in rejected]
    row.predictions = [
        Prediction(
            rank=i,
            code=c.code,
            label=c.label,
            score=c.score,
            decision=c.decision,
            role=c.role,
            cim11=list(c.cim11),
            evidence=[e.model_dump() for e in c.evidence],
            flags=list(c.flags),
            model_version=pred.model.version,
            thresholds_version=pred.model.thresholds_version,
            terminology_edition=pred.model.edition,
            input_hash=digest,
            created_at=now,
        )
        for i, c in enumerate(stored)
    ]
    session.add(row)
    session.flush()
    audit.record(
        session,
        actor=actor,
        event="stay.enqueued",
        stay=row,
        after={
            "origin": origin,
            "status": status.value,
            "auto_coded": auto,
            "qc_sampled": sampled,
            "dp": dp,
            "dr": dr,
            "suggestions": [
                {"code": c.code, "score": c.score, "decision": c.decision, "role": c.role}
                for c in pred.codes
                if c.decision != "reject"
            ],
        },
    )
    logger.info("stay %s enqueued (%s)", stay_in.id, status.value)
    return Enqueued(row.id, status.value, auto, sampled, True)


# -- reading ----------------------------------------------------------------------------


def latest_review(session: Session, stay: ReviewStay) -> Review | None:
    return session.scalars(
        select(Review).where(Review.stay_id == stay.id).order_by(Review.new_version.desc()).limit(1)
    ).first()


def coded_role(code: str, dp: str | None, dr: str | None) -> CodedRole:
    """The PMSI role of a code kept for the stay, given the stay's DP and DR."""
    if code == dp:
        return "DP"
    if code == dr:
        return "DR"
    return "DAS"


def current_coding(session: Session, stay: ReviewStay) -> dict[str, Any]:
    """The stay's coding now: the last save's final codes, else the model's kept proposal."""
    review = latest_review(session, stay)
    if review is not None:
        codes = [
            {"code": rc.final_code, "role": rc.role}
            for rc in review.codes
            if rc.final_code is not None
        ]
        return {"dp": review.dp_code, "dr": review.dr_code, "codes": codes, "source": "review"}
    kept = [p for p in stay.predictions if p.decision in ("auto", "review")]
    dp = stay.dp_code or next((p.code for p in kept if p.role == "DP"), None)
    dr = stay.dr_code or next(
        (p.code for p in kept if p.role == "DR" and dp is not None and p.code != dp), None
    )
    return {
        "dp": dp,
        "dr": dr,
        "codes": [{"code": p.code, "role": coded_role(p.code, dp, dr)} for p in kept],
        "source": "model",
    }


def stay_text(stay: ReviewStay) -> str:
    return joined_text(stay.documents)


def stay_summary(stay: ReviewStay) -> dict[str, Any]:
    return {
        "id": stay.id,
        "unit": stay.unit,
        "date": stay.stay_date.isoformat() if stay.stay_date else None,
        "status": stay.status,
        "status_label": STATUS_LABELS[StayStatus(stay.status)],
        "auto_coded": stay.auto_coded,
        "qc_sampled": stay.qc_sampled,
        "version": stay.version,
        "dp": stay.dp_code,
        "dr": stay.dr_code,
        "updated_at": stay.updated_at.isoformat() + "Z",
        "validated_by": stay.validated_by,
    }


def stay_view(session: Session, stay_id: str) -> dict[str, Any]:
    """Everything the stay page needs: text, suggestions with evidence, current coding."""
    stay = session.get(ReviewStay, stay_id)
    if stay is None:
        raise UnknownStay(f"stay {stay_id!r} is not in the review queue")
    review = latest_review(session, stay)
    view = stay_summary(stay)
    view.update(
        {
            "patient_id": stay.patient_id,
            "text": stay_text(stay),
            "documents": [
                {
                    "doc_type": d.doc_type,
                    "date": d.doc_date.isoformat() if d.doc_date else None,
                    "chars": len(d.text),
                }
                for d in stay.documents
            ],
            "model": {
                "version": stay.model_version,
                "thresholds_version": stay.thresholds_version,
                "terminology": stay.terminology,
                "edition": stay.terminology_edition,
                "input_hash": stay.input_hash,
            },
            "suggestions": [
                {
                    "code": p.code,
                    "label": p.label,
                    "score": p.score,
                    "decision": p.decision,
                    "role": p.role,
                    "cim11": p.cim11,
                    "evidence": p.evidence,
                    "flags": p.flags,
                }
                for p in stay.predictions
            ],
            "coding": current_coding(session, stay),
            "last_review": None
            if review is None
            else {
                "decision_id": review.id,
                "coder": review.coder,
                "at": review.created_at.isoformat() + "Z",
                "dp": review.dp_code,
                "dr": review.dr_code,
                "status": review.status_after,
                "codes": [
                    {
                        "code": rc.code,
                        "action": rc.action,
                        "final_code": rc.final_code,
                        "role": rc.role,
                        "reason": rc.reason,
                    }
                    for rc in review.codes
                ],
            },
        }
    )
    return view


@dataclass(frozen=True)
class QueueFilter:
    status: str | None = None
    unit: str | None = None
    date_from: datetime.date | None = None
    date_to: datetime.date | None = None
    qc: bool | None = None
    limit: int = 100
    offset: int = 0


def list_stays(session: Session, flt: QueueFilter) -> dict[str, Any]:
    query = select(ReviewStay)
    if flt.status:
        statuses = [s for s in flt.status.split(",") if s]
        unknown = [s for s in statuses if s not in {m.value for m in StayStatus}]
        if unknown:
            raise ReviewError(
                f"unknown status {unknown[0]!r}: use {', '.join(m.value for m in StayStatus)}"
            )
        query = query.where(ReviewStay.status.in_(statuses))
    if flt.unit:
        query = query.where(ReviewStay.unit == flt.unit)
    if flt.date_from:
        query = query.where(ReviewStay.stay_date >= flt.date_from)
    if flt.date_to:
        query = query.where(ReviewStay.stay_date <= flt.date_to)
    if flt.qc is not None:
        query = query.where(ReviewStay.qc_sampled.is_(flt.qc))
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.order_by(ReviewStay.qc_sampled.desc(), ReviewStay.stay_date, ReviewStay.id)
        .limit(flt.limit)
        .offset(flt.offset)
    ).all()
    return {"total": total, "stays": [stay_summary(s) for s in rows]}


def units(session: Session) -> list[str]:
    found = session.scalars(
        select(ReviewStay.unit).where(ReviewStay.unit.is_not(None)).distinct()
    ).all()
    return sorted(u for u in found if u)


def status_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(ReviewStay.status, func.count()).group_by(ReviewStay.status))
    counts = {s.value: 0 for s in StayStatus}
    counts.update({status: int(n) for status, n in rows})
    return counts


# -- saving -----------------------------------------------------------------------------


def _ensure_coder(session: Session, name: str) -> None:
    dialect = session.get_bind().dialect.name
    values = {"name": name, "created_at": utcnow(), "last_seen_at": utcnow()}
    if dialect == "postgresql":
        session.execute(postgresql.insert(Coder).values(**values).on_conflict_do_nothing())
    elif dialect == "sqlite":
        session.execute(sqlite.insert(Coder).values(**values).on_conflict_do_nothing())
    elif session.get(Coder, name) is None:
        session.add(Coder(**values))
        session.flush()


def check_code(code: str, terminology: str) -> str:
    """Canonical spelling of a code a coder typed; refuses codes outside the terminology."""
    from cimcoder.terminologies import TerminologyError, load_terminology, normalize_code

    try:
        canonical = normalize_code(code, terminology)
    except TerminologyError as exc:
        raise InvalidReview(str(exc)) from None
    table = load_terminology(terminology)
    if canonical not in table:
        raise InvalidReview(f"code {canonical} is not in {table.edition}")
    return canonical


def _review_result(
    review: Review, replayed: bool, warnings: list[str] | None = None
) -> dict[str, Any]:
    return {
        "decision_id": review.id,
        "stay_id": review.stay_id,
        "version": review.new_version,
        "status": review.status_after,
        "dp": review.dp_code,
        "dr": review.dr_code,
        "codes": [
            {"code": rc.code, "action": rc.action, "final_code": rc.final_code, "role": rc.role}
            for rc in review.codes
        ],
        "replayed": replayed,
        "warnings": warnings or [],
    }


def _restrictions(code: str, terminology: str) -> Restrictions | None:
    if terminology != "cim10":
        return None
    from cimcoder.terminologies import load_terminology

    concept = load_terminology("cim10").get(code)
    return concept.restrictions if concept is not None else None


def check_dp(code: str, terminology: str) -> None:
    """Refuse a DP that the PMSI never accepts as DP. A code not codable at all (forbidden
    parent) is not refused here: `pmsi_warnings` reports it whatever its role."""
    restrictions = _restrictions(code, terminology)
    if restrictions is not None and restrictions.codable and not restrictions.allows("DP"):
        raise InvalidReview(f"{code} ne peut pas être DP ({restrictions.describe()})")


def is_care_code(code: str, terminology: str) -> bool:
    """Whether `code` is a reason for care (CIM-10 chapter XXI, the Z codes; CIM-11 chapter
    24): the only DPs that a DR may complete."""
    from cimcoder.terminologies import load_terminology
    from cimcoder.terminologies.chapters import CARE_CHAPTER

    concept = load_terminology(terminology).get(code)
    return concept is not None and concept.chapter == CARE_CHAPTER.get(terminology)


def check_dr(code: str, dp: str | None, terminology: str) -> None:
    """Refuse a DR that the PMSI does not accept: a DR answers "care for which disease?"
    when the DP is a Z code for the care given (Z51.1 chemotherapy, Z51.5 palliative care,
    Z49.1 dialysis), so it needs such a DP, differs from it, and is allowed as DR by the ATIH.
    As for the DP, a forbidden parent code is left to `pmsi_warnings`."""
    if dp is None:
        raise InvalidReview(f"un DR ({code}) suppose un DP : choisissez d'abord le DP du séjour")
    if code == dp:
        raise InvalidReview(f"{code} est déjà le DP : le DR est une autre affection que le DP")
    if not is_care_code(dp, terminology):
        raise InvalidReview(
            f"pas de DR quand le DP {dp} n'est pas un code Z de motif de soins (p. ex. Z51.1 "
            f"chimiothérapie, Z51.5 soins palliatifs, Z49.1 dialyse) : codez {code} en DAS"
        )
    restrictions = _restrictions(code, terminology)
    if restrictions is not None and restrictions.codable and not restrictions.allows("DR"):
        raise InvalidReview(f"{code} ne peut pas être DR ({restrictions.describe()})")


def pmsi_warnings(codes: list[str], terminology: str) -> list[str]:
    """Codes the grouping would reject (forbidden parent codes): reported, not refused, since
    a model's label space may hold them."""
    from cimcoder.terminologies import load_terminology

    out = []
    for code in codes:
        restrictions = _restrictions(code, terminology)
        if restrictions is not None and not restrictions.codable:
            children = load_terminology("cim10").children(code)
            hint = f" : préférer {', '.join(children[:4])}" if children else ""
            out.append(f"{code} n'est pas codable en MCO (code père interdit){hint}")
    return out


def _canonical_codes(body: ReviewIn, terminology: str) -> dict[str, str]:
    """Canonical spelling of every code the coder typed (added, change targets, DP, DR).

    Done before the save's transaction opens: the first terminology load takes a while and
    must not hold the stay's row lock.
    """
    typed = [i.code for i in body.codes if i.action == "add"]
    typed += [i.new_code for i in body.codes if i.action == "change" and i.new_code]
    typed += [code for code in (body.dp, body.dr) if code is not None]
    canon = {raw: check_code(raw, terminology) for raw in dict.fromkeys(typed)}
    dp = canon[body.dp] if body.dp is not None else None
    if dp is not None:
        check_dp(dp, terminology)
    if body.dr is not None:
        check_dr(canon[body.dr], dp, terminology)
    return canon


def _plan(
    stay: ReviewStay, body: ReviewIn, canon: dict[str, str]
) -> tuple[list[ReviewCode], str | None, str | None]:
    """Turn the request into review rows; checks every rule before anything is written."""
    suggestions = {p.code: p for p in stay.predictions}
    seen: set[str] = set()
    rows: list[ReviewCode] = []
    for item in body.codes:
        action = Action(item.action)
        if action is Action.ADD:
            code = canon[item.code]
            if code in suggestions and suggestions[code].decision != "reject":
                raise InvalidReview(f"{code} is already suggested: accept it instead of adding it")
            final: str | None = code
        else:
            code = item.code
            if code not in suggestions:
                raise InvalidReview(f"{code} is not a suggestion of this stay: use 'add'")
            if action is Action.ACCEPT:
                final = code
            elif action is Action.REJECT:
                final = None
            else:
                final = canon[item.new_code or ""]
        if code in seen:
            raise InvalidReview(f"{code} is decided twice in the same save")
        seen.add(code)
        pred = suggestions.get(code)
        rows.append(
            ReviewCode(
                action=action.value,
                code=code,
                final_code=final,
                reason=item.reason,
                suggested_decision=pred.decision if pred is not None else None,
                score=pred.score if pred is not None else None,
            )
        )
    undecided = [p.code for p in stay.predictions if p.decision != "reject" and p.code not in seen]
    auto_left = [c for c in undecided if suggestions[c].decision == "auto"]
    review_left = [c for c in undecided if suggestions[c].decision == "review"]
    if body.status == "validated" and review_left:
        raise InvalidReview(
            "décision manquante (accepter, rejeter ou modifier) pour : " + ", ".join(review_left)
        )
    for code in auto_left:
        # An auto suggestion left as is stays coded: that is what "auto" means.
        pred = suggestions[code]
        rows.append(
            ReviewCode(
                action=Action.ACCEPT.value,
                code=code,
                final_code=code,
                reason="auto (non modifié)",
                suggested_decision=pred.decision,
                score=pred.score,
            )
        )
    finals = [r.final_code for r in rows if r.final_code is not None]
    if len(set(finals)) != len(finals):
        dupes = sorted({c for c in finals if finals.count(c) > 1})
        raise InvalidReview(f"code(s) coded twice: {', '.join(dupes)}")
    dp = None
    if body.dp is not None:
        dp = canon[body.dp]
        if dp not in finals:
            raise InvalidReview(f"the DP {dp} must be one of the codes kept for the stay")
    if body.status == "validated" and dp is None:
        raise InvalidReview("choisissez le DP avant de valider le séjour")
    dr = None
    if body.dr is not None:
        dr = canon[body.dr]
        if dr not in finals:
            raise InvalidReview(f"le DR {dr} doit être un des codes retenus pour le séjour")
    for position, row in enumerate(rows):
        row.position = position
        row.role = None if row.final_code is None else coded_role(row.final_code, dp, dr)
    return rows, dp, dr


def save_review(store: ReviewStore, stay_id: str, body: ReviewIn, coder: str) -> dict[str, Any]:
    """Apply one save, exactly once, or raise `ReviewConflict` / `InvalidReview`.

    The transaction writes the review, its codes, the stay's new version and the audit event
    together: a crash leaves either all of them or none.
    """
    with store.session() as session:
        stay = session.get(ReviewStay, stay_id)
        if stay is None:
            raise UnknownStay(f"stay {stay_id!r} is not in the review queue")
        terminology = stay.terminology
    canon = _canonical_codes(body, terminology)
    for _attempt in range(3):
        try:
            return _save_once(store, stay_id, body, coder, canon)
        except IntegrityError:
            # Another request with the same decision id (a retry) or the same next version
            # committed first: the loop answers from what is now stored.
            logger.info("save of %s raced with another; re-reading", stay_id)
        except ReviewConflict as exc:
            if not exc.current:
                # Lost the race at the UPDATE: tell the coder what the stay is now.
                with store.session() as session:
                    current = session.get(ReviewStay, stay_id)
                    if current is not None:
                        exc.current = stay_summary(current)
            raise
    raise ReviewConflict(f"stay {stay_id} is being saved by someone else: reload and try again")


def _save_once(
    store: ReviewStore, stay_id: str, body: ReviewIn, coder: str, canon: dict[str, str]
) -> dict[str, Any]:
    with store.session(write=True) as session:
        existing = session.get(Review, body.decision_id)
        if existing is not None:
            if existing.stay_id != stay_id or existing.coder != coder:
                raise ReviewError(f"decision id {body.decision_id} was already used elsewhere")
            return _review_result(existing, replayed=True)
        stay = session.get(ReviewStay, stay_id)
        if stay is None:
            raise UnknownStay(f"stay {stay_id!r} is not in the review queue")
        if stay.version != body.base_version:
            raise ReviewConflict(
                f"le séjour {stay_id} a été modifié (version {stay.version}, vous aviez "
                f"{body.base_version}) : rechargez-le",
                current=stay_summary(stay),
            )
        rows, dp, dr = _plan(stay, body, canon)
        before = current_coding(session, stay) | {"status": stay.status, "version": stay.version}
        _ensure_coder(session, coder)
        now = utcnow()
        new_version = body.base_version + 1
        values: dict[str, Any] = {
            "version": new_version,
            "status": StayStatus(body.status).value,
            "dp_code": dp,
            "dr_code": dr,
            "updated_at": now,
        }
        if body.status == "validated":
            values.update(validated_at=now, validated_by=coder)
        # An UPDATE answers a CursorResult (it has the rowcount); Session.execute is typed
        # for any statement.
        result = cast(
            "CursorResult[Any]",
            session.execute(
                update(ReviewStay)
                .where(ReviewStay.id == stay_id, ReviewStay.version == body.base_version)
                .values(**values)
                .execution_options(synchronize_session=False)
            ),
        )
        if result.rowcount != 1:
            raise ReviewConflict(f"le séjour {stay_id} vient d'être modifié : rechargez-le")
        review = Review(
            id=body.decision_id,
            stay_id=stay_id,
            coder=coder,
            base_version=body.base_version,
            new_version=new_version,
            status_after=values["status"],
            dp_code=dp,
            dr_code=dr,
            qc=stay.qc_sampled,
            n_codes=len(rows),
            created_at=now,
        )
        review.codes = rows
        session.add(review)
        session.flush()
        finals = [r.final_code for r in rows if r.final_code]
        warnings = pmsi_warnings(finals, stay.terminology)
        audit.record(
            session,
            actor=coder,
            event="review.saved",
            stay=stay,
            review_id=review.id,
            before=before,
            after={
                "status": values["status"],
                "version": new_version,
                "dp": dp,
                "dr": dr,
                "codes": [{"code": r.final_code, "role": r.role} for r in rows if r.final_code],
                "decisions": [
                    {
                        "code": r.code,
                        "action": r.action,
                        "final_code": r.final_code,
                        "reason": r.reason,
                        "suggested_decision": r.suggested_decision,
                    }
                    for r in rows
                ],
                "qc": stay.qc_sampled,
                "warnings": warnings,
            },
        )
        logger.info("stay %s saved by %s (version %d)", stay_id, coder, new_version)
        return _review_result(review, replayed=False, warnings=warnings)


def enqueue_many(
    store: ReviewStore,
    pairs: list[tuple[Any, Any]],
    *,
    default_qc_rate: float,
    actor: str = SYSTEM_ACTOR,
) -> list[Enqueued]:
    """Enqueue several stays in one transaction: all of them, or none on an error."""
    with store.session(write=True) as session:
        return [
            enqueue(session, stay, pred, default_qc_rate=default_qc_rate, actor=actor)
            for stay, pred in pairs
        ]
