"""The 22 chapters of CIM-10 with their official French titles, and WHO blocks."""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass
from importlib import resources

# (chapter, first category, last category, French title)
CIM10_CHAPTERS: tuple[tuple[str, str, str, str], ...] = (
    ("I", "A00", "B99", "Certaines maladies infectieuses et parasitaires"),
    ("II", "C00", "D48", "Tumeurs"),
    (
        "III",
        "D50",
        "D89",
        "Maladies du sang et des organes hématopoïétiques et certains troubles du système immunitaire",
    ),
    ("IV", "E00", "E90", "Maladies endocriniennes, nutritionnelles et métaboliques"),
    ("V", "F00", "F99", "Troubles mentaux et du comportement"),
    ("VI", "G00", "G99", "Maladies du système nerveux"),
    ("VII", "H00", "H59", "Maladies de l'œil et de ses annexes"),
    ("VIII", "H60", "H95", "Maladies de l'oreille et de l'apophyse mastoïde"),
    ("IX", "I00", "I99", "Maladies de l'appareil circulatoire"),
    ("X", "J00", "J99", "Maladies de l'appareil respiratoire"),
    ("XI", "K00", "K93", "Maladies de l'appareil digestif"),
    ("XII", "L00", "L99", "Maladies de la peau et du tissu cellulaire sous-cutané"),
    (
        "XIII",
        "M00",
        "M99",
        "Maladies du système ostéo-articulaire, des muscles et du tissu conjonctif",
    ),
    ("XIV", "N00", "N99", "Maladies de l'appareil génito-urinaire"),
    ("XV", "O00", "O99", "Grossesse, accouchement et puerpéralité"),
    (
        "XVI",
        "P00",
        "P96",
        "Certaines affections dont l'origine se situe dans la période périnatale",
    ),
    ("XVII", "Q00", "Q99", "Malformations congénitales et anomalies chromosomiques"),
    (
        "XVIII",
        "R00",
        "R99",
        "Symptômes, signes et résultats anormaux d'examens cliniques et de laboratoire, non classés ailleurs",
    ),
    (
        "XIX",
        "S00",
        "T98",
        "Lésions traumatiques, empoisonnements et certaines autres conséquences de causes externes",
    ),
    ("XX", "V01", "Y98", "Causes externes de morbidité et de mortalité"),
    (
        "XXI",
        "Z00",
        "Z99",
        "Facteurs influant sur l'état de santé et motifs de recours aux services de santé",
    ),
    ("XXII", "U00", "U99", "Codes d'utilisation particulière"),
)

WHO_ONE_CATEGORY = "10To11MapToOneCategory.txt.gz"
WHO_MULTIPLE_CATEGORIES = "10To11MapToMultipleCategories.txt.gz"
WHO_11_TO_10 = "11To10MapToOneCategory.txt.gz"


def who_file(name: str) -> resources.abc.Traversable:
    """A WHO mapping table shipped (unmodified) in `terminologies/data/who/`."""
    return resources.files("cimcoder.terminologies").joinpath("data", "who", name)


def read_who_table(name: str) -> list[dict[str, str]]:
    """Rows of a WHO mapping table (tab-separated, header on line 1)."""
    with (
        who_file(name).open("rb") as raw,
        gzip.open(raw, "rt", encoding="utf-8-sig", newline="") as text,
    ):
        reader = csv.DictReader(io.StringIO(text.read()), delimiter="\t", quoting=csv.QUOTE_NONE)
        return [dict(row) for row in reader]


def chapter_of_category(category: str) -> str | None:
    """Chapter (roman numeral) of a 3-character category, from the chapter ranges."""
    for chapter, first, last, _ in CIM10_CHAPTERS:
        if first <= category <= last:
            return chapter
    return None


# The chapter of the reasons for care (CIM-10 FR chapter XXI, the Z codes; CIM-11 chapter 24):
# in the PMSI, the only DPs a DR may complete ("care for which disease?").
CARE_CHAPTER = {"cim10": "XXI", "cim11": "24"}


@dataclass(frozen=True, slots=True)
class Block:
    code: str  # "I30-I52"
    first: str
    last: str
    chapter: str
    title_en: str

    @property
    def width(self) -> int:
        return (
            (ord(self.last[0]) - ord(self.first[0])) * 100
            + int(self.last[1:3])
            - int(self.first[1:3])
        )


def who_blocks() -> list[Block]:
    """ICD-10 blocks from the WHO crosswalk (English titles: WHO publishes no French ones here)."""
    blocks: dict[str, Block] = {}
    for row in read_who_table(WHO_ONE_CATEGORY):
        if row.get("10ClassKind") != "block":
            continue
        code = row["icd10Code"].strip()
        first, _, last = code.partition("-")
        if not first or not last:
            continue
        blocks[code] = Block(
            code, first, last, row["icd10Chapter"].strip(), row["icd10Title"].strip()
        )
    return sorted(blocks.values(), key=lambda b: (b.first, -b.width))
