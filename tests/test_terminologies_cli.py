"""`cimcoder terminology show|search|map|stats`: output and exit codes as a DIM sees them."""

from __future__ import annotations

import json

import pytest

from cimcoder.cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["terminology", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_show_congestive_heart_failure_with_restrictions(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = _run(capsys, "show", "I500")
    assert code == 0
    assert out.splitlines()[0] == "I50.0  Insuffisance cardiaque congestive"
    assert "interdit en DP, DR et DAS" in out  # a parent: code I50.00 ... I50.09 instead
    assert "I50.00, I50.01, I50.02, I50.09" in out
    assert "IX Maladies de l'appareil circulatoire" in out


def test_show_hypertension_allowed_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "show", " i10 ")
    assert code == 0
    assert "Hypertension essentielle (primitive)" in out
    assert "autorisé en DP, DR et DAS" in out


def test_show_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "show", "V01.0", "--json")
    data = json.loads(out)
    assert code == 0
    assert data["code"] == "V01.0" and data["terminology"] == "cim10"
    assert data["restrictions"]["mco_type"] == 2
    assert (
        data["restrictions"]["allowed_dp"] is False and data["restrictions"]["allowed_das"] is True
    )
    assert [a["code"] for a in data["ancestors"]][-1] == "XX"


def test_show_cim11(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "show", "BA00.Z", "--terminology", "cim11")
    assert code == 0
    assert out.splitlines()[0] == "BA00.Z  Hypertension essentielle, sans précision"
    assert "Essential hypertension, unspecified" in out


def test_show_unknown_code_lists_nearest_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "show", "I50.3")
    assert code == 2 and out == ""
    assert "unknown code I50.3" in err and "I50.1" in err and "I50.9" in err
    assert "Traceback" not in err


def test_show_malformed_code(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "show", "insuffisance")
    assert code == 2
    assert "not a valid CIM10 code" in err and "Traceback" not in err


def test_search_left_heart_failure(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "search", "insuffisance cardiaque gauche", "--limit", "3")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 3
    assert any(line.startswith("I50.1 ") for line in lines)


def test_search_json_abbreviation(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "search", "BPCO", "--json", "--limit", "5")
    data = json.loads(out)
    assert code == 0 and data["terminology"] == "cim10"
    assert len(data["results"]) == 5
    assert data["results"][0]["code"].startswith("J44")


def test_search_cim11(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "search", "HTA", "--terminology", "cim11", "--limit", "3")
    assert code == 0 and "BA00" in out


@pytest.mark.parametrize("argv", [("search", "  "), ("search", "HTA", "--limit", "0")])
def test_search_bad_arguments(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]) -> None:
    code, _, err = _run(capsys, *argv)
    assert code == 2 and "cimcoder: error:" in err


def test_search_without_result(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "search", "qqqq zzzz")
    assert code == 1 and out == "" and "no CIM10 code matches" in err


def test_map_hypertension_to_cim11(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "map", "I10", "--to", "cim11")
    assert code == 0
    assert "BA00.Z  Hypertension essentielle, sans précision  [équivalent]" in out


def test_map_post_coordinated_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "map", "A000", "--to", "cim11", "--json")
    data = json.loads(out)
    assert code == 0 and data["source"] == "A00.0"
    first = data["targets"][0]
    assert first["code"] == "1A00&XN8P1" and first["post_coordinated"] is True
    assert [p["code"] for p in first["parts"]] == ["1A00", "XN8P1"]


def test_map_french_extension_says_via(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "map", "E11.00", "--to", "cim11")
    assert code == 0 and "5A11" in out and "via E11.0" in out


def test_map_without_who_target(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "map", "R53+1", "--to", "cim11", "--json")
    data = json.loads(out)
    assert code == 0 and data["no_mapping_reason"].startswith("NoMapping")


def test_map_back_to_cim10(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "map", "BA00.Z", "--to", "cim10")
    assert code == 0 and "I10  Hypertension essentielle (primitive)" in out


def test_map_wrong_terminology_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "map", "BA00.Z", "--to", "cim11")  # a CIM-11 code given as CIM-10
    assert code == 2 and "not a valid CIM10 code" in err


def test_stats(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "stats", "--json")
    data = json.loads(out)
    assert code == 0
    assert data["cim10"]["edition"].startswith("cim10-fr-edsnlp-")
    assert data["cim11"]["edition"].startswith("cim11-mms-")
    assert 0.9 < data["crosswalk"]["cim10_coverage"] <= 1.0
    code, out, _ = _run(capsys, "stats")
    assert code == 0 and "of CIM-10 FR codes get a target" in out


def test_show_post_coordinated_cim11(capsys: pytest.CaptureFixture[str]) -> None:
    # STEMI, left side: a stem and an extension code.
    code, out, _ = _run(capsys, "show", "ba41.0&xk8g", "--terminology", "cim11")
    assert code == 0
    assert out.splitlines()[0] == (
        "BA41.0&XK8G  Infarctus du myocarde aigu avec sus-décalage du segment ST & Gauche"
    )
    assert "XK8G" in out and "code d'extension" in out


def test_show_post_coordinated_with_unknown_extension(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "show", "1A00&XN8P9", "--terminology", "cim11")
    assert code == 2 and "unknown code XN8P9" in err and "XN8P1" in err
