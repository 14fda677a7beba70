"""FHIR R4 bundles (JSON): one stay per Encounter.

- Text: `DocumentReference.content[].attachment` with `contentType` text/plain and base64
  `data` (a URL-only attachment is skipped and reported), and `Composition` sections (titles
  and XHTML narratives turned into plain text). Linked to the stay by
  `DocumentReference.context.encounter` / `Composition.encounter`.
- Codes: `Condition.code.coding` with a CIM-10 system (`http://hl7.org/fhir/sid/icd-10`, the
  French CIM-10 terminology server URIs, or the ICD-10 OID; the WHO ICD-11 MMS URI when
  loading CIM-11), linked by `Condition.encounter`. Refuted or entered-in-error conditions are
  skipped and reported.
- Role: a `Condition.category` coding or a `Condition.extension` value reading DP, DR or DAS;
  else the `Encounter.diagnosis` entry pointing at the condition (its `use` coding DP/DR/DAS,
  or `rank` 1 -> DP); else "unknown".
- A bundle without any Encounter is one stay (id = bundle id or file name) holding all of its
  documents and conditions.

Input: a `.json` file holding a Bundle, or a folder of them (every `*.json`).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import html
import json
import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from cimcoder.training.corpora.codes import CodeResolver, TerminologyName, UnknownPolicy
from cimcoder.training.corpora.errors import CorpusError
from cimcoder.training.corpora.schema import (
    CODED_ROLES,
    Corpus,
    Diagnosis,
    Document,
    LoadReport,
    Role,
    Sex,
    Stay,
    StayContext,
)

logger = logging.getLogger(__name__)

CIM10_SYSTEMS = frozenset(
    {
        "http://hl7.org/fhir/sid/icd-10",
        "http://hl7.org/fhir/sid/icd-10-fr",
        "https://smt.esante.gouv.fr/terminologie-cim-10",
        "https://smt.esante.gouv.fr/terminologie-cim-10/",
        "urn:oid:2.16.840.1.113883.6.3",
        "urn:oid:1.2.250.1.213.2.4",
    }
)
CIM11_SYSTEMS = frozenset({"http://id.who.int/icd/release/11/mms", "http://id.who.int/icd11/mms"})
_SEX_BY_GENDER: dict[str, Sex] = {"male": "M", "female": "F"}
_TAG = re.compile(r"<[^>]+>")
_BLOCK_TAG = re.compile(r"</?(?:p|div|br|li|tr|h[1-6])\b[^>]*>", re.IGNORECASE)
_SPACES = re.compile(r"[ \t]+")


def _xhtml_to_text(div: str) -> str:
    text = _BLOCK_TAG.sub("\n", div)
    text = html.unescape(_TAG.sub("", text))
    lines = [_SPACES.sub(" ", line).strip() for line in text.splitlines()]
    return "\n".join(line for line in lines if line)


def _date(value: Any) -> datetime.date | None:
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return datetime.date.fromisoformat(value[:10])
    except ValueError:
        return None


def _codings(concepts: Any) -> list[dict[str, Any]]:
    items = concepts if isinstance(concepts, list) else [concepts]
    return [c for item in items if isinstance(item, dict) for c in item.get("coding", []) if isinstance(c, dict)]


def _explicit_role(values: list[Any]) -> Role | None:
    for value in values:
        role = value.strip().upper() if isinstance(value, str) else None
        if role in CODED_ROLES:
            return role
    return None


class _Bundle:
    """The resources of one bundle, indexed by their references."""

    def __init__(self, bundle: dict[str, Any], label: str) -> None:
        self.label = label
        self.id = str(bundle.get("id") or Path(label).stem)
        self.by_ref: dict[str, dict[str, Any]] = {}
        self.resources: list[dict[str, Any]] = []
        for entry in bundle.get("entry") or []:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict) or "resourceType" not in resource:
                continue
            self.resources.append(resource)
            if resource.get("id"):
                self.by_ref[f"{resource['resourceType']}/{resource['id']}"] = resource
            if entry.get("fullUrl"):
                self.by_ref[str(entry["fullUrl"])] = resource

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.resources if r["resourceType"] == kind]

    def key(self, reference: Any) -> str | None:
        """Stable key of the referenced resource (Type/id when known)."""
        ref = reference.get("reference") if isinstance(reference, dict) else None
        if not isinstance(ref, str):
            return None
        target = self.by_ref.get(ref)
        if target is not None and target.get("id"):
            return f"{target['resourceType']}/{target['id']}"
        return ref.split("/_history", 1)[0]


def _read_bundles(path: Path, report: LoadReport) -> list[_Bundle]:
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise CorpusError(f"{path}: no .json FHIR bundle")
    elif path.is_file():
        files = [path]
    else:
        raise CorpusError(f"{path}: no such file or folder")
    bundles = []
    for file in files:
        report.records_read += 1
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            if len(files) == 1:
                raise CorpusError(f"{file}: not a JSON FHIR bundle: {exc}") from None
            report.skip(f"not JSON: {exc}", file=str(file))
            continue
        if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
            kind = data.get("resourceType") if isinstance(data, dict) else type(data).__name__
            if len(files) == 1:
                raise CorpusError(f"{file}: expected a FHIR Bundle, got {kind}")
            report.skip(f"expected a FHIR Bundle, got {kind}", file=str(file))
            continue
        bundles.append(_Bundle(data, str(file)))
    return bundles


def load_fhir(
    path: str | Path,
    *,
    terminology: TerminologyName = "cim10",
    unknown_codes: UnknownPolicy = "drop",
    name: str | None = None,
) -> Corpus:
    """Read stays from FHIR R4 bundles (see module doc)."""
    path = Path(path)
    report = LoadReport(source=str(path))
    resolver = CodeResolver(report, terminology, unknown_codes)
    systems = CIM10_SYSTEMS if terminology == "cim10" else CIM11_SYSTEMS
    stays: list[Stay] = []
    seen: set[str] = set()
    for bundle in _read_bundles(path, report):
        for stay in _bundle_stays(bundle, report, resolver, systems, terminology):
            if stay.id in seen:
                report.skip("duplicated encounter id", file=bundle.label, resource_id=stay.id)
                continue
            seen.add(stay.id)
            stays.append(stay)
    if not stays:
        reasons = "; ".join(str(s) for s in report.skipped[:5]) or "no document text"
        raise CorpusError(f"{path}: no stay with a document: {reasons}")
    logger.info("loaded %d FHIR encounters (%d skipped, %d code issues)", len(stays), len(report.skipped), len(report.code_issues))
    return Corpus(stays=stays, report=report, name=name or path.stem)


def _bundle_stays(
    bundle: _Bundle,
    report: LoadReport,
    resolver: CodeResolver,
    systems: frozenset[str],
    terminology: TerminologyName,
) -> list[Stay]:
    encounters = {f"Encounter/{e['id']}": e for e in bundle.of_type("Encounter") if e.get("id")}
    fallback = None if encounters else f"Bundle/{bundle.id}"

    def stay_key(resource: dict[str, Any], field: str) -> str | None:
        value = resource.get(field)
        if isinstance(value, list):  # DocumentReference.context.encounter is a list in R4
            value = value[0] if value else None
        key = bundle.key(value)
        return key if key is not None else fallback

    documents: dict[str, list[Document]] = defaultdict(list)
    for doc in bundle.of_type("DocumentReference"):
        rid = f"DocumentReference/{doc.get('id')}"
        if doc.get("status") == "entered-in-error":
            report.skip("entered-in-error", file=bundle.label, resource_id=rid)
            continue
        key = stay_key(doc.get("context") or {}, "encounter")
        if key is None:
            report.skip("no context.encounter", file=bundle.label, resource_id=rid)
            continue
        texts, problems = _attachment_texts(doc)
        for problem in problems:
            report.skip(problem, file=bundle.label, resource_id=rid)
        for text in texts:
            documents[key].append(Document(text=text, doc_type=_doc_type(doc), date=_date(doc.get("date"))))
    for comp in bundle.of_type("Composition"):
        rid = f"Composition/{comp.get('id')}"
        key = stay_key(comp, "encounter")
        if key is None:
            report.skip("no encounter", file=bundle.label, resource_id=rid)
            continue
        text = _composition_text(comp.get("section") or [])
        if not text.strip():
            report.skip("Composition without section text", file=bundle.label, resource_id=rid)
            continue
        documents[key].append(Document(text=text, doc_type=_doc_type(comp), date=_date(comp.get("date"))))

    roles_from_encounters: dict[str, Role] = {}
    for encounter in encounters.values():
        for item in encounter.get("diagnosis") or []:
            cond_key = bundle.key(item.get("condition"))
            if cond_key is None:
                continue
            role = _explicit_role([c.get("code") for c in _codings(item.get("use"))])
            if role is None and item.get("rank") == 1:
                role = "DP"
            if role is not None:
                roles_from_encounters[cond_key] = role

    diagnoses: dict[str, list[Diagnosis]] = defaultdict(list)
    for cond in bundle.of_type("Condition"):
        rid = f"Condition/{cond.get('id')}"
        status = [c.get("code") for c in _codings(cond.get("verificationStatus"))]
        if "refuted" in status or "entered-in-error" in status:
            report.skip(f"verificationStatus {'/'.join(map(str, status))}", file=bundle.label, resource_id=rid)
            continue
        key = stay_key(cond, "encounter")
        if key is None:
            report.skip("no encounter", file=bundle.label, resource_id=rid)
            continue
        if key not in documents:
            report.skip(f"{key} has no document text", file=bundle.label, resource_id=rid)
            continue
        codings = [c for c in _codings(cond.get("code")) if c.get("system") in systems and c.get("code")]
        if not codings:
            found = sorted({str(c.get("system")) for c in _codings(cond.get("code"))}) or ["none"]
            report.skip(f"no {terminology.upper()} coding (systems: {', '.join(found)})", file=bundle.label, resource_id=rid)
            continue
        role = (
            _explicit_role([c.get("code") for c in _codings(cond.get("category"))])
            or _explicit_role(_extension_values(cond))
            or roles_from_encounters.get(f"Condition/{cond.get('id')}")
            or "unknown"
        )
        raw = str(codings[0]["code"])
        diag = resolver.diagnosis(raw, role, stay_id=key.split("/", 1)[-1], file=bundle.label, line=None)
        if diag is not None:
            diagnoses[key].append(diag)

    for enc_key in encounters:
        if enc_key not in documents:
            report.skip("encounter without document text", file=bundle.label, resource_id=enc_key)
    stays = []
    for key, docs in documents.items():
        stay_encounter = encounters.get(key)
        if stay_encounter is None and fallback is None:
            report.skip(f"documents point at {key}, absent from the bundle", file=bundle.label, resource_id=key)
            continue
        patient_ref = bundle.key((stay_encounter or {}).get("subject")) or _first_subject(bundle)
        stays.append(
            Stay(
                id=key.split("/", 1)[-1],
                patient_id=patient_ref.split("/", 1)[-1] if patient_ref else None,
                documents=docs,
                diagnoses=diagnoses.get(key, []),
                terminology=terminology,
                edition=resolver.edition if diagnoses.get(key) else None,
                context=_context(stay_encounter, bundle.by_ref.get(patient_ref or "")),
            )
        )
    return stays


def _first_subject(bundle: _Bundle) -> str | None:
    patients = bundle.of_type("Patient")
    return f"Patient/{patients[0]['id']}" if len(patients) == 1 and patients[0].get("id") else None


def _doc_type(resource: dict[str, Any]) -> str:
    kind = resource.get("type")
    if isinstance(kind, dict):
        text = kind.get("text") or next((c.get("display") for c in _codings(kind) if c.get("display")), None)
        if isinstance(text, str) and text.strip():
            return text.strip()
    return "crh"


def _extension_values(resource: dict[str, Any]) -> list[Any]:
    values: list[Any] = []
    for ext in resource.get("extension") or []:
        if not isinstance(ext, dict):
            continue
        values.append(ext.get("valueCode"))
        values.append(ext.get("valueString"))
        coding = ext.get("valueCoding")
        if isinstance(coding, dict):
            values.append(coding.get("code"))
        values.extend(c.get("code") for c in _codings(ext.get("valueCodeableConcept") or {}))
    return values


def _attachment_texts(doc: dict[str, Any]) -> tuple[list[str], list[str]]:
    texts, problems = [], []
    for content in doc.get("content") or []:
        attachment = content.get("attachment") if isinstance(content, dict) else None
        if not isinstance(attachment, dict):
            continue
        content_type = str(attachment.get("contentType") or "text/plain")
        if not content_type.startswith("text/plain"):
            problems.append(f"attachment of type {content_type} (only text/plain is read)")
            continue
        data = attachment.get("data")
        if not data:
            problems.append("attachment without inline data (by URL only)")
            continue
        charset = "utf-8"
        match = re.search(r"charset=([\w-]+)", content_type)
        if match:
            charset = match.group(1)
        try:
            text = base64.b64decode(data, validate=True).decode(charset)
        except (binascii.Error, ValueError, LookupError) as exc:
            problems.append(f"attachment data not decodable: {exc}")
            continue
        if text.strip():
            texts.append(text)
        else:
            problems.append("empty attachment")
    if not texts and not problems:
        problems.append("no attachment")
    return texts, problems


def _composition_text(sections: list[Any]) -> str:
    parts: list[str] = []
    for section in sections:
        if not isinstance(section, dict):
            continue
        title = section.get("title")
        div = (section.get("text") or {}).get("div") if isinstance(section.get("text"), dict) else None
        body = _xhtml_to_text(div) if isinstance(div, str) else ""
        nested = _composition_text(section.get("section") or [])
        chunk = "\n".join(p for p in (f"{title} :" if title else "", body, nested) if p)
        if body or nested:
            parts.append(chunk)
    return "\n\n".join(parts)


def _context(encounter: dict[str, Any] | None, patient: dict[str, Any] | None) -> StayContext | None:
    period = (encounter or {}).get("period") or {}
    start, end = _date(period.get("start")), _date(period.get("end"))
    los = (end - start).days if start and end and end >= start else None
    gender = (patient or {}).get("gender")
    sex = _SEX_BY_GENDER.get(gender) if isinstance(gender, str) else None
    birth = _date((patient or {}).get("birthDate") if patient else None)
    age = None
    if birth and start:
        years = start.year - birth.year - ((start.month, start.day) < (birth.month, birth.day))
        age = years if 0 <= years <= 130 else None
    unit = None
    service = (encounter or {}).get("serviceType")
    if isinstance(service, dict):
        unit = service.get("text") or next((c.get("display") for c in _codings(service) if c.get("display")), None)
    if los is None and sex is None and age is None and unit is None:
        return None
    return StayContext(unit=unit, age=age, sex=sex, length_of_stay=los)
