"""FHIR R4 bundles: DocumentReference / Composition for text, Condition / Encounter for codes."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from cimcoder.training.corpora import CorpusError, load_dataset

ICD10 = "http://hl7.org/fhir/sid/icd-10"
CRH = ("Compte rendu d'hospitalisation. Pneumopathie aiguë communautaire du lobe inférieur droit "
       "chez un patient BPCO. Suspicion d'embolie pulmonaire éliminée par l'angioscanner.")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _condition(cid: str, code: str, encounter: str, system: str = ICD10, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Condition", "id": cid, "subject": {"reference": "Patient/p1"},
            "encounter": {"reference": encounter},
            "code": {"coding": [{"system": system, "code": code}]}, **extra}


def _bundle() -> dict[str, Any]:
    entries = [
        {"resourceType": "Patient", "id": "p1", "gender": "male", "birthDate": "1950-06-15"},
        {"resourceType": "Encounter", "id": "e1", "status": "finished", "subject": {"reference": "Patient/p1"},
         "period": {"start": "2024-01-10T08:00:00+01:00", "end": "2024-01-17T12:00:00+01:00"},
         "serviceType": {"text": "pneumologie"},
         "diagnosis": [{"condition": {"reference": "Condition/c1"}, "rank": 1}]},
        {"resourceType": "DocumentReference", "id": "d1", "status": "current", "date": "2024-01-17T15:00:00+01:00",
         "type": {"text": "crh"},
         "context": {"encounter": [{"reference": "Encounter/e1"}]},
         "content": [{"attachment": {"contentType": "text/plain; charset=utf-8", "data": _b64(CRH)}}]},
        {"resourceType": "DocumentReference", "id": "d2", "status": "current",
         "context": {"encounter": [{"reference": "Encounter/e1"}]},
         "content": [{"attachment": {"contentType": "application/pdf", "data": _b64("%PDF")}}]},
        _condition("c1", "J18.9", "Encounter/e1"),
        _condition("c2", "J44.9", "Encounter/e1",
                   category=[{"coding": [{"system": "https://example.fr/pmsi-role", "code": "DAS"}]}]),
        _condition("c3", "I26.9", "Encounter/e1",
                   verificationStatus={"coding": [{"code": "refuted"}]}),
        _condition("c4", "486", "Encounter/e1", system="http://hl7.org/fhir/sid/icd-9-cm"),
        _condition("c5", "I50.7", "Encounter/e1"),
        # A second encounter described by a Composition (text in XHTML sections).
        {"resourceType": "Encounter", "id": "e2", "status": "finished", "subject": {"reference": "Patient/p1"}},
        {"resourceType": "Composition", "id": "k1", "status": "final", "date": "2024-05-02",
         "encounter": {"reference": "Encounter/e2"},
         "section": [
             {"title": "Motif", "text": {"div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Douleur de la fosse iliaque droite.</p></div>"}},
             {"title": "Conclusion", "text": {"div": "<div><p>Appendicite aigu&#235; op&#233;r&#233;e.</p><p>Pas d'HTA connue.</p></div>"}},
         ]},
        _condition("c6", "K358", "Encounter/e2",
                   extension=[{"url": "https://example.fr/StructureDefinition/pmsi-role", "valueCode": "DP"}]),
        # An encounter without any text: reported.
        {"resourceType": "Encounter", "id": "e3", "status": "finished"},
    ]
    return {"resourceType": "Bundle", "id": "b1", "type": "collection",
            "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in entries]}


def test_fhir_bundle(tmp_path: Path) -> None:
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(_bundle()), encoding="utf-8")
    corpus = load_dataset(path)
    by_id = {s.id: s for s in corpus}
    assert set(by_id) == {"e1", "e2"}
    pneumo, appendicite = by_id["e1"], by_id["e2"]
    assert pneumo.text == CRH
    assert [(d.code, d.role) for d in pneumo.diagnoses] == [("J18.9", "DP"), ("J44.9", "DAS")]
    assert "I26.9" not in pneumo.codes  # refuted: ruled out by the angioscanner
    assert pneumo.patient_id == "p1"
    assert pneumo.documents[0].date.isoformat() == "2024-01-17"
    assert pneumo.context is not None
    assert (pneumo.context.sex, pneumo.context.age, pneumo.context.length_of_stay, pneumo.context.unit) == (
        "M", 73, 7, "pneumologie")
    assert appendicite.text == "Motif :\nDouleur de la fosse iliaque droite.\n\nConclusion :\nAppendicite aiguë opérée.\nPas d'HTA connue."
    assert [(d.code, d.role) for d in appendicite.diagnoses] == [("K35.8", "DP")]
    skipped = {r.resource_id: r.reason for r in corpus.report.skipped}
    assert "application/pdf" in skipped["DocumentReference/d2"]
    assert skipped["Condition/c3"] == "verificationStatus refuted"
    assert "no CIM10 coding" in skipped["Condition/c4"] and "icd-9-cm" in skipped["Condition/c4"]
    assert skipped["Encounter/e3"] == "encounter without document text"
    assert [i.source_code for i in corpus.report.unknown_codes] == ["I50.7"]


def test_fhir_bundle_without_encounter_is_one_stay(tmp_path: Path) -> None:
    bundle = {"resourceType": "Bundle", "id": "sejour-42", "type": "document", "entry": [
        {"resource": {"resourceType": "DocumentReference", "id": "d",
                      "content": [{"attachment": {"contentType": "text/plain", "data": _b64("Érysipèle de jambe gauche.")}}]}},
        {"resource": {"resourceType": "Condition", "id": "c",
                      "code": {"coding": [{"system": "https://smt.esante.gouv.fr/terminologie-cim-10/", "code": "A46"}]}}},
    ]}
    folder = tmp_path / "bundles"
    folder.mkdir()
    (folder / "sejour-42.json").write_text(json.dumps(bundle), encoding="utf-8")
    (folder / "casse.json").write_text("{ pas du json", encoding="utf-8")
    corpus = load_dataset(folder)
    assert [(s.id, s.codes) for s in corpus] == [("sejour-42", ["A46"])]
    (skipped,) = corpus.report.skipped
    assert skipped.file is not None and skipped.file.endswith("casse.json") and "not JSON" in skipped.reason


def test_fhir_malformed_single_file(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text("{ pas du json", encoding="utf-8")
    with pytest.raises(CorpusError, match="not a JSON FHIR bundle"):
        load_dataset(path)
    path.write_text(json.dumps({"resourceType": "Patient", "id": "p"}), encoding="utf-8")
    with pytest.raises(CorpusError, match="expected a FHIR Bundle, got Patient"):
        load_dataset(path)
    path.write_text(json.dumps({"resourceType": "Bundle", "entry": []}), encoding="utf-8")
    with pytest.raises(CorpusError, match="no stay with a document"):
        load_dataset(path)
