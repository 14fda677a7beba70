"""`cimcoder review import / export / audit / monitoring` on real files."""

from __future__ import annotations

import argparse
import json
import uuid
from pathlib import Path

import pytest
from test_review_store import make_case, make_chimio_case

from cimcoder.serving.review import cli
from cimcoder.serving.review.store import ReviewError
from cimcoder.training.corpora.schema import Stay


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cimcoder")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args))


@pytest.fixture
def predicted(tmp_path: Path) -> tuple[Path, Path]:
    """What `cimcoder predict` wrote for three reports, and the reports it read."""
    texts = tmp_path / "crh"
    texts.mkdir()
    with (tmp_path / "preds.jsonl").open("w") as out:
        for i in range(3):
            stay, prediction = make_case(f"crh-{i}")
            (texts / f"crh-{i}.txt").write_text(stay["text"], encoding="utf-8")
            out.write(prediction.model_dump_json() + "\n")
    return tmp_path / "preds.jsonl", texts


def test_import_then_export_and_audit(
    predicted: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    preds, texts = predicted
    db = ["--database-url", f"sqlite:///{tmp_path / 'review.db'}"]
    assert run(["review", "import", "--predictions", str(preds), "--texts", str(texts),
                "--unit", "Cardiologie", *db]) == 0
    assert "queued 3 stay(s) (0 already there)" in capsys.readouterr().out
    assert run(["review", "import", "--predictions", str(preds), "--texts", str(texts), *db]) == 0
    assert "queued 0 stay(s) (3 already there)" in capsys.readouterr().out

    out = tmp_path / "valides.jsonl"
    assert run(["review", "export", "--output", str(out), *db]) == 0
    assert out.read_text() == ""  # nothing validated yet
    assert run(["review", "audit", "--output", str(tmp_path / "audit.jsonl"), *db]) == 0
    events = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    # The exports are audit events too (the trail holds the export that wrote it).
    assert [e["event"] for e in events] == [
        *["stay.enqueued"] * 3, "export.validated", "audit.exported",
    ]
    assert {e["actor"] for e in events} == {"cli"}
    assert events[3]["after"] == {"file": "valides.jsonl", "stays": 0}

    gold = tmp_path / "gold.jsonl"
    stays = [
        Stay(id=f"crh-{i}", documents=[{"text": "x"}],
             diagnoses=[{"code": "I50.0", "role": "DP"}, {"code": "E87.68", "role": "DAS"}])
        for i in range(2)
    ]
    gold.write_text("".join(s.model_dump_json() + "\n" for s in stays))
    assert run(["review", "scripted", "--gold", str(gold), *db]) == 0
    assert "validated 2 stay(s)" in capsys.readouterr().out
    assert run(["review", "export", "--output", str(out), *db]) == 0
    assert "wrote 2 validated stay(s)" in capsys.readouterr().out
    exported = [Stay.model_validate_json(x) for x in out.read_text().splitlines()]
    assert [(s.id, [(d.code, d.role) for d in s.diagnoses]) for s in exported] == [
        ("crh-0", [("I50.0", "DP"), ("E87.68", "DAS")]),
        ("crh-1", [("I50.0", "DP"), ("E87.68", "DAS")]),
    ]
    assert exported[0].context is not None and exported[0].context.unit == "Cardiologie"

    assert run(["review", "monitoring", *db]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["totals"]["by_status"] == {"to_code": 1, "validated": 2}


def test_chemotherapy_sessions_export_their_dr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = tmp_path / "crh"
    texts.mkdir()
    with (tmp_path / "preds.jsonl").open("w") as out:
        for i in range(2):
            stay, prediction = make_chimio_case(f"chimio-{i}", decisions={"C79.5": "auto"})
            (texts / f"chimio-{i}.txt").write_text(stay["text"], encoding="utf-8")
            out.write(prediction.model_dump_json() + "\n")
    db = ["--database-url", f"sqlite:///{tmp_path / 'review.db'}"]
    assert run(["review", "import", "--predictions", str(tmp_path / "preds.jsonl"),
                "--texts", str(texts), *db]) == 0
    # Gold of chimio-0: the DIM's coding with its DR; chimio-1's gold puts the DR next to a
    # DP that takes none (C50.4), so the scripted coder codes C79.5 as a DAS.
    gold = tmp_path / "gold.jsonl"
    stays = [
        Stay(id="chimio-0", documents=[{"text": "x"}],
             diagnoses=[{"code": "Z51.1", "role": "DP"}, {"code": "C50.4", "role": "DR"},
                        {"code": "C79.5", "role": "DAS"}]),
        Stay(id="chimio-1", documents=[{"text": "x"}],
             diagnoses=[{"code": "C50.4", "role": "DP"}, {"code": "C79.5", "role": "DR"}]),
    ]
    gold.write_text("".join(s.model_dump_json() + "\n" for s in stays))
    capsys.readouterr()
    assert run(["review", "scripted", "--gold", str(gold), *db]) == 0
    printed = capsys.readouterr().out
    assert "validated 2 stay(s)" in printed
    assert "1 gold DR(s) not allowed next to the DP kept as DAS" in printed
    out = tmp_path / "retours.jsonl"
    assert run(["review", "export", "--output", str(out), *db]) == 0
    exported = [Stay.model_validate_json(x) for x in out.read_text().splitlines()]
    assert [(s.id, [(d.code, d.role) for d in s.diagnoses]) for s in exported] == [
        ("chimio-0", [("Z51.1", "DP"), ("C50.4", "DR"), ("C79.5", "DAS")]),
        ("chimio-1", [("C50.4", "DP"), ("C79.5", "DAS")]),
    ]


def test_bad_inputs_are_clear_errors(predicted: tuple[Path, Path], tmp_path: Path) -> None:
    preds, texts = predicted
    db = ["--database-url", f"sqlite:///{tmp_path / 'review.db'}"]
    broken = tmp_path / "broken.jsonl"
    broken.write_text(preds.read_text().splitlines()[0] + "\n{\"id\": \"crh-9\"}\n")
    with pytest.raises(ReviewError, match=r"broken.jsonl, line 2: not a prediction"):
        run(["review", "import", "--predictions", str(broken), "--texts", str(texts), *db])
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(preds.read_bytes() + '{"id": "crh-9", "note": "\u00e9t\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(ReviewError, match=r"latin1.jsonl: not UTF-8 text"):
        run(["review", "import", "--predictions", str(latin1), "--texts", str(texts), *db])
    twice = tmp_path / "textes.jsonl"
    twice.write_text(
        json.dumps({"id": "crh-0", "text": "Insuffisance cardiaque congestive."}) + "\n"
        + json.dumps({"id": "crh-0", "text": "Pneumopathie franche lobaire aiguë."}) + "\n",
        encoding="utf-8",
    )
    with pytest.raises(ReviewError, match=r"textes.jsonl, line 2: stay id 'crh-0' appears twice"):
        run(["review", "import", "--predictions", str(preds), "--texts", str(twice), *db])
    report = (texts / "crh-1.txt").read_text(encoding="utf-8")
    (texts / "crh-1.txt").write_bytes((report + " \u00e9t\u00e9").encode("latin-1"))
    with pytest.raises(ReviewError, match=r"crh-1.txt: not UTF-8 text"):
        run(["review", "import", "--predictions", str(preds), "--texts", str(texts), *db])
    (texts / "crh-1.txt").write_text(report, encoding="utf-8")
    (texts / "crh-2.txt").unlink()
    with pytest.raises(ReviewError, match=r"1 prediction\(s\) have no text"):
        run(["review", "import", "--predictions", str(preds), "--texts", str(texts), *db])
    with pytest.raises(ReviewError, match="cannot tell the audit format"):
        run(["review", "audit", "--output", str(tmp_path / "audit.txt"), *db])
    with pytest.raises(ReviewError, match="cannot open the review store"):
        run(["review", "export", "--output", str(tmp_path / "x.jsonl"),
             "--database-url", "postgresql+psycopg://nobody@127.0.0.1:1/nothing"])


@pytest.mark.parametrize(
    "dialect", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_audit_verify_names_the_first_event_edited_behind_the_service(
    predicted: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
    dialect: str,
) -> None:
    from sqlalchemy import create_engine, text

    preds, texts = predicted
    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path / 'review.db'}"
    else:
        server = request.getfixturevalue("postgres_server")
        url = server.create_database(f"review_verify_{uuid.uuid4().hex[:8]}")
    db = ["--database-url", url]
    assert run(["review", "import", "--predictions", str(preds), "--texts", str(texts), *db]) == 0
    capsys.readouterr()
    assert run(["review", "audit", "--verify", *db]) == 0
    assert "audit trail intact: 3 event(s)" in capsys.readouterr().out

    engine = create_engine(url)
    with engine.begin() as conn:
        if dialect == "sqlite":
            conn.execute(text("DROP TRIGGER audit_events_no_update"))
        else:
            conn.execute(text("DROP TRIGGER audit_events_append_only ON audit_events"))
        second = conn.execute(text("SELECT id FROM audit_events ORDER BY id")).scalars().all()[1]
        conn.execute(text("UPDATE audit_events SET stay_id = 'crh-9' WHERE id = :i"), {"i": second})
    engine.dispose()
    assert run(["review", "audit", "--verify", *db]) == 1
    assert f"audit trail BROKEN at event {second}" in capsys.readouterr().out
    with pytest.raises(ReviewError, match=r"--output FILE .* or --verify"):
        run(["review", "audit", *db])
