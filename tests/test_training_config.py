"""Run configs (YAML + dotted overrides), label spaces and the model registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from cimcoder.errors import CimcoderError
from cimcoder.training.config import (
    ConfigError,
    RunConfig,
    dump_config,
    load_config,
    load_pretrain_config,
    read_run_config,
)
from cimcoder.training.labels import LabelSpace, LabelSpaceError
from cimcoder.training.registry import get_model, register_model, registered_models

REPO = Path(__file__).resolve().parents[1]


def test_overrides_are_typed_and_applied(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("training:\n  epochs: 3\nmodel:\n  chunking:\n    max_chunks: 4\n", encoding="utf-8")
    cfg = load_config(path, ["training.lr=3e-5", "data.labels.terminology=cim11", "training.max_steps=7"])
    assert cfg.training.lr == 3e-5
    assert cfg.training.epochs == 3
    assert cfg.training.max_steps == 7
    assert cfg.model.chunking.max_chunks == 4
    assert cfg.model.chunking.max_total_tokens == 4 * cfg.model.chunking.max_chunk_tokens
    assert cfg.data.labels.terminology == "cim11"
    # The file's name is the run's name, so re-running it resumes the same folder.
    assert cfg.run_dir == Path("runs") / "codiesp-fr" / "exp"


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("training.lrr=3e-5", "unknown key 'training.lrr'"),
        ("trainin.lr=3e-5", "unknown key 'trainin'"),
        ("training.amp=fp32", "training.amp"),
        ("training.epochs=beaucoup", "training.epochs"),
        ("data.labels.terminology=cim9", "data.labels.terminology"),
        ("training.lr", "key=value"),
        ("model.chunking.stride=500", "stride"),
    ],
)
def test_bad_overrides_fail_loudly(override: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert needle in str(err.value)
    assert isinstance(err.value, CimcoderError)


def test_unknown_key_in_yaml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("training:\n  learning_rate: 0.1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"training\.learning_rate: unknown key"):
        load_config(path)


def test_missing_or_malformed_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("# cardiologie, \u00e9t\u00e9\ntraining:\n  epochs: 2\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(latin1)


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, ["training.seed=7", "model.params.C=0.5", "tracking.run_name=essai"])
    dump_config(cfg, tmp_path / "config.yaml")
    again = read_run_config(tmp_path)
    assert again == cfg
    assert again.model.params == {"C": 0.5}


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path: Path) -> None:
    if "pretrain" in path.parts:
        cfg = load_pretrain_config(path)
        assert cfg.encoder.hidden % cfg.encoder.heads == 0
    else:
        cfg = load_config(path)
        assert isinstance(cfg, RunConfig)


def test_label_space_bands_and_file(tmp_path: Path) -> None:
    stays = [["J13", "I10"]] * 12 + [["E11.9"]] * 3 + [["I10"]]
    space = LabelSpace.from_code_sets(stays, edition="cim10-test", extra_codes=["N39.0", "J13"])
    # Seen codes first, most frequent first; unseen terminology codes after.
    assert space.codes == ["I10", "J13", "E11.9", "N39.0"]
    assert space.count("I10") == 13
    assert [space.band(c) for c in space.codes] == ["frequent", "frequent", "rare", "unseen"]
    assert space.encode([["J13", "Z99.9"]]) == [[0, 1, 0, 0]]
    space.save(tmp_path)
    again = LabelSpace.load(tmp_path)
    assert again.codes == space.codes
    assert again.train_counts == space.train_counts
    assert again.edition == "cim10-test"
    with pytest.raises(LabelSpaceError):
        space.index("A00")


def test_label_space_min_count_and_bad_file(tmp_path: Path) -> None:
    space = LabelSpace.from_code_sets([["J13"], ["J13"], ["I10"]], min_count=2)
    assert space.codes == ["J13"]
    (tmp_path / "labels.json").write_text("{pas du json", encoding="utf-8")
    with pytest.raises(LabelSpaceError, match="not valid JSON"):
        LabelSpace.load(tmp_path)
    (tmp_path / "labels.json").write_text('["J13", "I10"]', encoding="utf-8")
    with pytest.raises(LabelSpaceError, match="JSON object"):
        LabelSpace.load(tmp_path)
    with pytest.raises(LabelSpaceError, match="duplicate"):
        LabelSpace("cim10", None, ["J13", "J13"])


def test_registry_lists_plm_icd_and_refuses_unknown() -> None:
    assert "plm_icd" in registered_models()
    with pytest.raises(CimcoderError, match=r"unknown model 'plm-icd'.*plm_icd"):
        get_model("plm-icd")
    with pytest.raises(TypeError, match="lacks"):

        @register_model("incomplet")
        class Incomplete:  # no predict_scores, save, ...
            pass
