"""CLI of cimcoder.terminologies: `cimcoder terminology show|search|map|stats`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cimcoder.terminologies.errors import TerminologyError

_KIND_WORDS = {
    "chapter": "chapitre",
    "block": "bloc",
    "category": "catégorie",
    "subcategory": "sous-catégorie",
    "extension": "subdivision à 5 ou 6 caractères (extension ATIH ou OMS)",
    "stem": "code souche",
    "extension_code": "code d'extension",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this area's sub-commands."""
    parser = subparsers.add_parser(
        "terminology",
        help="look up, search and map CIM-10 FR / CIM-11 codes",
        description="CIM-10 FR (PMSI) and CIM-11 MMS in French, with the WHO crosswalk.",
    )
    commands = parser.add_subparsers(dest="terminology_command", metavar="ACTION", required=True)

    show = commands.add_parser("show", help="a code: labels, hierarchy, PMSI restrictions")
    show.add_argument("code", metavar="CODE", help="e.g. I50.0, I500, i50.0, BA00.Z")
    _terminology_option(show)
    _json_option(show)
    show.set_defaults(handler=_show)

    search = commands.add_parser("search", help="codes whose French labels match a text")
    search.add_argument("text", metavar="TEXT", help='e.g. "insuffisance cardiaque gauche", HTA')
    _terminology_option(search)
    search.add_argument("--limit", type=int, default=10, metavar="N", help="at most N results (10)")
    _json_option(search)
    search.set_defaults(handler=_search)

    map_ = commands.add_parser("map", help="CIM-10 FR <-> CIM-11 through the WHO tables")
    map_.add_argument(
        "code", metavar="CODE", help="a CIM-10 code (--to cim11) or a CIM-11 code (--to cim10)"
    )
    map_.add_argument("--to", required=True, choices=("cim11", "cim10"), help="target terminology")
    _json_option(map_)
    map_.set_defaults(handler=_map)

    stats = commands.add_parser("stats", help="counts, editions and crosswalk coverage")
    _json_option(stats)
    stats.set_defaults(handler=_stats)

    lexicon = commands.add_parser(
        "lexicon",
        help="the French clinical lexicon: how clinicians write a code, checks of the curated files",
        description="Without CODE: entries per kind and the problems of the curated files "
        "(terminologies/data/lexicon/*.tsv; exit 1 if any). With CODE: every way the lexicon "
        "writes it (curated abbreviations and synonyms, ATIH labels, CIM-11 titles).",
    )
    lexicon.add_argument("code", nargs="?", metavar="CODE", help="e.g. I10, I48.0")
    _json_option(lexicon)
    lexicon.set_defaults(handler=_lexicon)


def _terminology_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--terminology", choices=("cim10", "cim11"), default="cim10", help="terminology (cim10)"
    )


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def _print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2))


def _show(args: argparse.Namespace) -> int:
    from cimcoder.terminologies.registry import load_terminology

    terminology = load_terminology(args.terminology)
    if args.terminology == "cim11" and any(sep in args.code for sep in "&/"):
        return _show_cluster(args)
    concept = terminology[args.code]
    children = list(terminology.children(concept.code)) if concept.kind != "chapter" else []
    ancestors = terminology.ancestors(concept.code)
    if args.json:
        data = concept.to_dict()
        data["terminology"] = terminology.name
        data["edition"] = terminology.edition
        data["ancestors"] = [{"code": code, "label": terminology[code].label} for code in ancestors]
        data["children"] = children
        _print_json(data)
        return 0
    print(f"{concept.code}  {concept.long_label}")
    rows: list[tuple[str, str]] = [
        ("édition", terminology.edition),
        ("niveau", _KIND_WORDS.get(concept.kind, concept.kind)),
    ]
    if concept.short_label:
        rows.append(("libellé court", concept.short_label))
    if concept.label_en:
        rows.append(("anglais", concept.label_en))
    if concept.deleted_in:
        rows.append(("supprimé", f"code supprimé en {concept.deleted_in}"))
    if ancestors:
        rows.append(("hiérarchie", " > ".join(f"{c} {terminology[c].label}" for c in ancestors)))
    if concept.restrictions is not None:
        r = concept.restrictions
        rows.append(("MCO/HAD", f"{r.describe()} (type {r.mco_type})"))
        rows.append(("SMR", f"{r.describe_smr()} (profil {r.smr_profile or '-'})"))
        rows.append(
            ("PSY", f"{r.describe_psy()} (type {r.psy_type if r.psy_type is not None else '-'})")
        )
    if children:
        shown = ", ".join(children[:12]) + (
            f" … (+{len(children) - 12})" if len(children) > 12 else ""
        )
        rows.append(("codes fils", shown))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}")
    return 0


def _show_cluster(args: argparse.Namespace) -> int:
    """A post-coordinated CIM-11 code: the concept of each part."""
    from cimcoder.terminologies.cim11 import load_cim11

    cim11 = load_cim11()
    code = cim11.normalize(args.code)
    parts = cim11.cluster(code)  # unknown part: UnknownCodeError with suggestions
    if args.json:
        _print_json(
            {
                "code": code,
                "terminology": "cim11",
                "edition": cim11.edition,
                "title": cim11.cluster_title(code),
                "title_en": cim11.cluster_title(code, english=True),
                "parts": [part.to_dict() for part in parts],
            }
        )
        return 0
    print(f"{code}  {cim11.cluster_title(code)}")
    print(f"  édition  {cim11.edition}")
    print("  niveau   code post-coordonné (cluster)")
    for part in parts:
        print(f"  {part.code:<8} {part.label}  [{_KIND_WORDS.get(part.kind, part.kind)}]")
    return 0


def _search(args: argparse.Namespace) -> int:
    from cimcoder.terminologies.registry import load_terminology

    if not args.text.strip():
        raise TerminologyError("empty search text")
    if args.limit < 1:
        raise TerminologyError(f"--limit must be at least 1, got {args.limit}")
    terminology = load_terminology(args.terminology)
    hits = terminology.search(args.text, limit=args.limit)
    if args.json:
        results = []
        for hit in hits:
            item = hit.to_dict()
            concept = terminology[hit.code]
            if concept.restrictions is not None:
                item["restrictions"] = concept.restrictions.describe()
            results.append(item)
        _print_json(
            {
                "terminology": terminology.name,
                "edition": terminology.edition,
                "query": args.text,
                "results": results,
            }
        )
        return 0 if hits else 1
    if not hits:
        print(f"no {args.terminology.upper()} code matches {args.text!r}", file=sys.stderr)
        return 1
    width = max(len(hit.code) for hit in hits)
    for hit in hits:
        concept = terminology[hit.code]
        note = concept.restrictions.short_description() if concept.restrictions else ""
        note = f"  [{note}]" if note else ""
        print(f"{hit.code.ljust(width)}  {hit.label}{note}")
    return 0


_NAMES = {"cim10": "CIM-10 FR", "cim11": "CIM-11"}
_RELATION_WORDS = {
    "Equivalent": "équivalent",
    "Subclass": "plus précis que la cible",
    "Superclass": "plus large que la cible",
}


def _map(args: argparse.Namespace) -> int:
    from cimcoder.terminologies.crosswalk import load_crosswalk

    crosswalk = load_crosswalk()
    if args.to == "cim11":
        source = crosswalk.cim10[args.code]
        source_code = source.code
        targets = crosswalk.to_cim11(source_code)
        reason = (
            crosswalk.no_mapping_reason(source_code)
            if not any(t.primary for t in targets)
            else None
        )
        target_edition = crosswalk.cim11.edition
        source_title = source.long_label
    else:
        source_code = crosswalk.cim11.normalize(args.code)
        targets = crosswalk.to_cim10(source_code)  # unknown stem: error with suggestions
        reason = None if targets else "no CIM-10 code in the WHO ICD-11 -> ICD-10 table"
        target_edition = crosswalk.cim10.edition
        source_title = crosswalk.cim11.cluster_title(source_code)
    if args.json:
        _print_json(
            {
                "source": source_code,
                "source_title": source_title,
                "to": args.to,
                "release": crosswalk.release,
                "target_edition": target_edition,
                "no_mapping_reason": reason,
                "targets": [t.to_dict() for t in targets],
            }
        )
        return 0
    print(f"{source_code}  {source_title}  ->  {_NAMES[args.to]} ({crosswalk.release})")
    if reason:
        print(f"  pas de correspondance retenue par l'OMS ({reason})")
    for target in targets:
        flag = "" if target.primary else "  (candidat)"
        relation = _RELATION_WORDS.get(target.relation, target.relation or "relation non précisée")
        print(f"  {target.code}  {target.title}  [{relation}]{flag}")
        if target.post_coordinated:
            for part, title in target.parts:
                print(f"      {part}  {title}")
        if target.via:
            print(f"      via {target.via} (code le plus proche présent dans la table OMS)")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from cimcoder.terminologies.crosswalk import load_crosswalk

    crosswalk = load_crosswalk()
    cim10, cim11 = crosswalk.cim10, crosswalk.cim11
    coverage = crosswalk.stats()
    kinds10: dict[str, int] = {}
    for code in cim10.codes():
        kind = cim10[code].kind
        kinds10[kind] = kinds10.get(kind, 0) + 1
    kinds11: dict[str, int] = {}
    for code in cim11.codes():
        kind = cim11[code].kind
        kinds11[kind] = kinds11.get(kind, 0) + 1
    data = {
        "cim10": {
            "edition": cim10.edition,
            "source": cim10.source,
            "codes": len(cim10.codes()),
            "codable_codes": len(cim10.codable_codes()),
            "by_kind": kinds10,
            "chapters": len(cim10.chapters()),
        },
        "cim11": {
            "edition": cim11.edition,
            "source": cim11.source,
            "codes": len(cim11.codes()),
            "by_kind": kinds11,
        },
        "crosswalk": coverage,
    }
    if args.json:
        _print_json(data)
        return 0
    print(f"CIM-10 FR  {cim10.edition}")
    print(
        f"  codes             {len(cim10.codes())} ({', '.join(f'{k} {v}' for k, v in kinds10.items())})"
    )
    print(f"  codables PMSI     {len(cim10.codable_codes())} (type MCO/HAD autre que 3)")
    print(f"CIM-11 MMS {cim11.edition}")
    print(
        f"  codes             {len(cim11.codes())} ({', '.join(f'{k} {v}' for k, v in kinds11.items())})"
    )
    print(f"Crosswalk  {crosswalk.release}")
    print(
        f"  CIM-10 -> CIM-11  {coverage['cim10_coverage']:.1%} of CIM-10 FR codes get a target "
        f"({coverage['cim10_mapped_direct']} direct, {coverage['cim10_mapped_via_parent']} via their WHO parent, "
        f"{coverage['cim10_no_mapping']} without)"
    )
    print(f"  codables PMSI     {coverage['cim10_codable_coverage']:.1%}")
    print(f"  CIM-11 -> CIM-10  {coverage['cim11_coverage']:.1%} of CIM-11 stem codes get a target")
    return 0


def _lexicon(args: argparse.Namespace) -> int:
    from cimcoder.terminologies.lexicon import (
        check_entries,
        check_still_current,
        curated_entries,
        load_lexicon,
    )

    if args.code is None:
        curated = curated_entries()
        problems = [why for _, why in check_entries(curated)] + check_still_current()
        lexicon = load_lexicon()
        counts = lexicon.counts()
        curated_codes = len({c for e in curated for c in e.codes})
        if args.json:
            _print_json(
                {
                    "edition": lexicon.edition,
                    "entries": counts,
                    "curated_codes": curated_codes,
                    "problems": problems,
                }
            )
        else:
            print(f"lexicon of {lexicon.edition}: {len(lexicon)} entries")
            for kind, n in counts.items():
                print(f"  {kind:<14} {n}")
            print(f"curated files: {len(curated)} entries over {curated_codes} codes, "
                  f"{len(problems)} problems")
            for why in problems[:50]:
                print(f"  {why}")
        return 1 if problems else 0
    from cimcoder.terminologies import load_cim10

    code = load_cim10()[args.code].code  # UnknownCodeError: a one-line error, exit 2
    entries = [e for e in load_lexicon().entries if code in e.codes]
    if args.json:
        _print_json([{"codes": list(e.codes), "term": e.term, "kind": e.kind, "match": e.match,
                      "source": e.source, "note": e.note} for e in entries])
        return 0
    print(f"{code}: {len(entries)} ways of writing it")
    for e in entries:
        other = f" (with {'+'.join(c for c in e.codes if c != code)})" if len(e.codes) > 1 else ""
        note = f"  # {e.note}" if e.note else ""
        print(f"  {e.kind:<14} {e.match:<5} {e.term}{other}{note}")
    return 0
