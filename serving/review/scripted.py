"""A scripted coder: reviews queued stays against known gold codes.

For the end-to-end check on a coded corpus (e.g. CodiEsp-FR dev): each suggestion in the
gold coding is accepted, every other kept suggestion rejected, gold codes the model missed are
added, the gold DP (else the first gold code) is chosen, and the gold DR when the PMSI accepts
it next to that DP (else it stays coded, as a DAS). The saves go through the same `save_review`
as a human coder's, so the audit trail and exports are the real ones.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import select

from cimcoder.serving.review.schemas import CodeDecisionIn, ReviewIn
from cimcoder.serving.review.store import ReviewStay, ReviewStore, StayStatus
from cimcoder.serving.review.workflow import (
    InvalidReview,
    check_code,
    check_dp,
    check_dr,
    save_review,
)

logger = logging.getLogger(__name__)


@dataclass
class ScriptedSummary:
    reviewed: int = 0
    skipped_no_gold: int = 0
    accepted: int = 0
    rejected: int = 0
    added: int = 0
    codes_not_addable: int = 0
    skipped_invalid: int = 0
    dp_changed: int = 0
    dr_dropped: int = 0


def _allowed_dp(code: str, terminology: str) -> bool:
    try:
        check_dp(code, terminology)
    except InvalidReview:
        return False
    return True


def _allowed_dr(code: str, dp: str, terminology: str) -> bool:
    try:
        check_dr(code, dp, terminology)
    except InvalidReview:
        return False
    return True


def review_with_gold(
    store: ReviewStore,
    gold: Mapping[str, Sequence[tuple[str, str]]],
    coder: str,
    statuses: Iterable[str] = (StayStatus.TO_CODE, StayStatus.IN_REVIEW, StayStatus.AUTO_CODED),
) -> ScriptedSummary:
    """Validate every queued stay that has gold codes `{stay_id: [(code, role), ...]}`."""
    summary = ScriptedSummary()
    with store.session() as session:
        todo = [
            (s.id, s.version, s.terminology, [(p.code, p.decision) for p in s.predictions])
            for s in session.scalars(
                select(ReviewStay).where(ReviewStay.status.in_([str(x) for x in statuses]))
            )
        ]
    for stay_id, version, terminology, suggestions in todo:
        codes = gold.get(stay_id)
        if not codes:
            summary.skipped_no_gold += 1
            continue
        wanted = [c for c, _ in codes]
        suggested = {c for c, _ in suggestions}
        decisions = []
        for code, decision in suggestions:
            if code in wanted:
                decisions.append(CodeDecisionIn(code=code, action="accept"))
                summary.accepted += 1
            elif decision != "reject":
                decisions.append(CodeDecisionIn(code=code, action="reject"))
                summary.rejected += 1
        for code in wanted:
            if code in suggested:
                continue
            try:
                check_code(code, terminology)
            except InvalidReview:
                # A gold code outside the model's terminology edition cannot be coded here.
                summary.codes_not_addable += 1
                continue
            decisions.append(CodeDecisionIn(code=code, action="add"))
            summary.added += 1
        finals = [d.code for d in decisions if d.action in ("accept", "add")]
        if not finals:
            summary.skipped_no_gold += 1
            continue
        dp_gold = next((c for c, role in codes if role == "DP"), None)
        ordered = ([dp_gold] if dp_gold in finals else []) + [c for c in finals if c != dp_gold]
        dp = next((c for c in ordered if _allowed_dp(c, terminology)), None)
        if dp is None:
            summary.skipped_invalid += 1
            continue
        dr_gold = next((c for c, role in codes if role == "DR"), None)
        dr = (
            dr_gold
            if dr_gold is not None and dr_gold in finals and _allowed_dr(dr_gold, dp, terminology)
            else None
        )
        body = ReviewIn(
            decision_id=uuid.uuid4().hex, base_version=version, codes=decisions, dp=dp, dr=dr
        )
        try:
            save_review(store, stay_id, body, coder)
        except InvalidReview as exc:
            logger.info("stay %s left in the queue: %s", stay_id, exc)
            summary.skipped_invalid += 1
            continue
        summary.reviewed += 1
        summary.dp_changed += int(dp_gold is not None and dp != dp_gold)
        summary.dr_dropped += int(dr_gold is not None and dr is None)
    return summary
