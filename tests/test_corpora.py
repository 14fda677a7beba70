"""Schema, shipped CodiEsp-FR data sets, data folder lookup, `cimcoder data` CLI."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

from cimcoder.cli import main
from cimcoder.training.corpora import CorpusError, Diagnosis, Document, Stay, load_dataset
from cimcoder.training.corpora.paths import (
    DEPRECATED_ENV_VAR,
    ENV_VAR,
    candidate_data_dirs,
    shipped_path,
)

REPO = Path(__file__).resolve().parents[1]


def test_stay_text_and_codes() -> None:
    stay = Stay(
        id=42,  # type: ignore[arg-type]  # integer ids from databases become text
        documents=[Document(text="Pneumopathie franche lobaire aiguë à pneumocoque."),
                   Document(text="Lettre de sortie.", doc_type="lettre")],
        diagnoses=[Diagnosis(code="J13", role="DP"), Diagnosis(code="F17.2", role="DAS"),
                   Diagnosis(code="J13", role="unknown")],
    )
    assert stay.id == "42"
    assert stay.text == "Pneumopathie franche lobaire aiguë à pneumocoque.\n\nLettre de sortie."
    assert stay.codes == ["J13", "F17.2"]
    with pytest.raises(ValueError):
        Stay(id="x", documents=[])
    with pytest.raises(ValueError):
        Diagnosis(code="J13", role="principal")  # type: ignore[arg-type]


def test_codiesp_dev_and_train() -> None:
    dev = load_dataset("codiesp-fr/dev")
    train = load_dataset("codiesp-fr/train")
    assert len(dev) == 250 and len(train) == 500
    assert not {s.id for s in dev} & {s.id for s in train}
    assert all(d.role == "unknown" for s in dev for d in s.diagnoses)
    report = dev.report
    assert report.ok and not report.skipped
    # ICD-10-CM-only source codes (blank code_cim10) are reported with their line, not dropped silently.
    assert 50 < len(report.unmapped_codes) < 150
    issue = report.unmapped_codes[0]
    assert issue.kind == "unmapped" and issue.line is not None and issue.source_code
    tsv = (shipped_path("codiesp-fr/dev") / "codes.tsv").read_text(encoding="utf-8").splitlines()
    fields = tsv[issue.line - 1].split("\t")
    assert fields[0] == issue.stay_id and fields[1] == issue.source_code and fields[2] == ""
    # Mapped codes are canonical CIM-10 FR, the CIE-10-ES original kept.
    diag = dev.stays[0].diagnoses[0]
    assert "." in diag.source_code or len(diag.source_code) == 3
    assert all(len(code.replace(".", "")) <= 4 for s in dev for code in s.codes)


def test_shipped_data_found_through_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "data" / "codiesp-fr" / "dev"
    shutil.copytree(REPO / "data" / "codiesp-fr" / "dev", target)
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "data"))
    assert shipped_path("codiesp-fr/dev") == target
    assert len(load_dataset("codiesp-fr/dev")) == 250


def test_old_data_dir_variable_still_finds_data_sets_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "data" / "codiesp-fr" / "dev"
    shutil.copytree(REPO / "data" / "codiesp-fr" / "dev", target)
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv(DEPRECATED_ENV_VAR, str(tmp_path / "data"))
    with pytest.warns(DeprecationWarning, match=f"{DEPRECATED_ENV_VAR} is deprecated: set {ENV_VAR}"):
        assert shipped_path("codiesp-fr/dev") == target
    assert f"set {ENV_VAR}" in caplog.text  # also logged, for CLI users who never see warnings
    # The new name wins over the old one, without a warning.
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "elsewhere"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert candidate_data_dirs()[0] == tmp_path / "elsewhere"


def test_state_dir_does_not_hide_the_shipped_data_sets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cimcoder.serving.settings import Settings

    # The service's state folder holds a folder named like a data set (an old export, say):
    # under the single old variable it would have shadowed the shipped one.
    (tmp_path / "codiesp-fr" / "dev").mkdir(parents=True)
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.delenv(DEPRECATED_ENV_VAR, raising=False)
    monkeypatch.setenv("CIMCODER_STATE_DIR", str(tmp_path))
    assert tmp_path not in candidate_data_dirs()
    assert shipped_path("codiesp-fr/dev") == (REPO / "data" / "codiesp-fr" / "dev").resolve()
    assert len(load_dataset("codiesp-fr/dev")) == 250
    settings = Settings(model=None, auth_disabled=True, _env_file=None)
    assert settings.state_dir == tmp_path
    assert settings.resolved_database_url() == f"sqlite:///{(tmp_path / 'review.db').resolve()}"


def test_shipped_data_has_licence_and_no_test_split() -> None:
    readme = (REPO / "data" / "codiesp-fr" / "README.md").read_text(encoding="utf-8")
    assert "CC BY 4.0" in readme and "Miranda-Escalada" in readme
    assert not (REPO / "data" / "codiesp-fr" / "test").exists()


def test_cli_stats_json_codiesp_dev(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "stats", "codiesp-fr/dev", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["stays"] == 250 and stats["documents"] == 250
    assert stats["tokens"]["unit"] == "whitespace-separated words" and stats["tokens"]["total"] > 50_000
    assert stats["codes"]["distinct"] > 500 and 5 < stats["codes"]["label_cardinality"] < 15
    assert stats["roles"]["unknown"] > 2000 and stats["roles"]["DP"] == 0
    assert sum(b["codes"] for b in stats["frequency_bands"].values()) == stats["codes"]["distinct"]


def test_cli_stats_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "stats", "synth-fr/30@1"]) == 0
    out = capsys.readouterr().out
    assert "stays           30 (30 synthetic)" in out and "roles           DP 30" in out


def test_cli_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"id": "S1", "text": "Érysipèle de jambe.", "dp": "A46"}) + "\n", encoding="utf-8")
    assert main(["data", "validate", str(good)]) == 0
    assert "valid" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"id": "S1", "text": "Érysipèle de jambe.", "dp": "A46"}) + "\n"
        + json.dumps({"id": "S2", "text": "Pneumopathie.", "dp": "J18.9", "das": "I50.7"}) + "\n"
        + "{cassé\n",
        encoding="utf-8",
    )
    assert main(["data", "validate", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "line 3: invalid JSON" in out
    assert "stay S2: unknown code 'I50.7'" in out
    assert "invalid: 1 skipped records, 1 invalid or unknown codes" in out
    # stats still describes what loaded, and warns on stderr (stdout stays pure JSON).
    assert main(["data", "stats", str(bad), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["stays"] == 2
    assert "warning: 1 records skipped, 1 invalid or unknown codes" in captured.err


def test_cli_errors_are_messages_not_tracebacks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "validate", str(tmp_path / "absent.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cimcoder: error:") and "no such file or folder" in err
    assert main(["data", "synth", "--n", "0", "--seed", "1", "--output", str(tmp_path / "x.jsonl")]) == 2
    assert "from 1 to" in capsys.readouterr().err


def test_cli_synth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "synth.jsonl"
    assert main(["data", "synth", "--n", "40", "--seed", "9", "--output", str(out)]) == 0
    assert "wrote 40 synthetic stays (seed 9)" in capsys.readouterr().out
    assert len(out.read_text(encoding="utf-8").splitlines()) == 40
    assert main(["data", "validate", str(out)]) == 0


def test_codiesp_not_found_anywhere_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cimcoder.training.corpora.paths as paths

    monkeypatch.setattr(paths, "candidate_data_dirs", lambda: [tmp_path / "nowhere"])
    with pytest.raises(CorpusError, match=r"not found under .*; set CIMCODER_DATASETS_DIR$"):
        load_dataset("codiesp-fr/dev")


@pytest.mark.postgres
def test_postgres_fixture_is_a_real_server(postgres_url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        version = conn.execute(sa.text("SHOW server_version")).scalar()
        assert version and int(version.split(".")[0]) >= 12
        assert conn.execute(sa.text("SELECT current_database()")).scalar() == "cimcoder_test"
    engine.dispose()
