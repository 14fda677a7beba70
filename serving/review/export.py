"""Export of validated stays in the corpora schema, so that `cimcoder train` retrains on them."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import cast

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from cimcoder.serving.review.store import Review, ReviewStay, ReviewStore, StayStatus
from cimcoder.serving.review.workflow import coded_role
from cimcoder.terminologies.codes import TerminologyName
from cimcoder.training.corpora.schema import Diagnosis, Document, Stay, StayContext

logger = logging.getLogger(__name__)


_ROLE_ORDER = {"DP": 0, "DR": 1, "DAS": 2}


def to_corpus_stay(stay: ReviewStay, review: Review) -> Stay:
    """The coded stay as the corpora schema has it: DP first, then the DR (when the DP is a Z
    care code), then the DAS in coding order."""
    diagnoses = [
        Diagnosis(
            code=rc.final_code, role=coded_role(rc.final_code, review.dp_code, review.dr_code)
        )
        for rc in review.codes
        if rc.final_code is not None
    ]
    diagnoses.sort(key=lambda d: _ROLE_ORDER[d.role])
    return Stay(
        id=stay.id,
        patient_id=stay.patient_id,
        documents=[
            Document(text=d.text, doc_type=d.doc_type, date=d.doc_date) for d in stay.documents
        ],
        diagnoses=diagnoses,
        # The store keeps the model's terminology as text; Stay validates it.
        terminology=cast(TerminologyName, stay.terminology),
        edition=stay.terminology_edition,
        context=StayContext(unit=stay.unit) if stay.unit else None,
    )


def iter_validated_stays(store: ReviewStore, batch: int = 200) -> Iterator[Stay]:
    """Validated stays with their last saved coding, in id order, read in batches."""
    last = ""
    while True:
        with store.session() as session:
            stays = session.scalars(
                select(ReviewStay)
                .where(ReviewStay.status == StayStatus.VALIDATED, ReviewStay.id > last)
                .order_by(ReviewStay.id)
                .limit(batch)
                .options(selectinload(ReviewStay.documents))
            ).all()
            if not stays:
                return
            reviews = {
                r.stay_id: r
                for r in session.scalars(
                    select(Review)
                    .where(Review.stay_id.in_([s.id for s in stays]))
                    .order_by(Review.new_version)
                    .options(selectinload(Review.codes))
                )
            }
            out = [to_corpus_stay(s, reviews[s.id]) for s in stays if s.id in reviews]
            last = stays[-1].id
        yield from out


def export_validated(
    store: ReviewStore, path: Path, include: Iterable[Stay] = ()
) -> tuple[int, int]:
    """Write validated stays as JSONL (one corpora `Stay` a line), after the stays of
    `include` (a base training corpus) whose ids the coders did not validate: a coder's
    coding replaces the base one. Returns (validated stays, base stays kept)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    validated = list(iter_validated_stays(store))
    reviewed = {stay.id for stay in validated}
    kept = 0
    with tmp.open("w", encoding="utf-8") as out:
        for stay in include:
            if stay.id not in reviewed:
                out.write(stay.model_dump_json(exclude_none=True) + "\n")
                kept += 1
        for stay in validated:
            out.write(stay.model_dump_json(exclude_none=True) + "\n")
    tmp.replace(path)
    logger.info("exported %d validated stays (+%d base stays)", len(validated), kept)
    return len(validated), kept
