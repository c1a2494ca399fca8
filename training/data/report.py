"""The corpus data card: a human-readable Markdown summary of an ingest manifest."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

_DROP_HELP = {
    "exact_duplicate": "same cleaned text as an earlier document",
    "near_duplicate": "MinHash estimate of word-shingle Jaccard >= threshold against an earlier document",
    "too_short": "shorter than min_chars after cleaning",
    "symbol_ratio": "too many non-alphanumeric characters",
    "repeated_lines": "too much text in repeated lines",
    "toxicity": "too many blocklist hits per 1,000 words",
    "mean_word_length": "mean word length outside [min_mean_word_length, max_mean_word_length] (Gopher)",
    "symbol_word_ratio": "too many '#' and ellipses per word (Gopher)",
    "bullet_lines": "too many lines starting with a bullet (Gopher)",
    "ellipsis_lines": "too many lines ending with an ellipsis (Gopher)",
    "alpha_words": "too few words containing a letter (Gopher)",
    "stop_words": "too few English stop words (the, be, to, of, and, that, have, with) (Gopher)",
    "duplicate_lines": "too many lines repeating an earlier line (Gopher)",
    "duplicate_paragraphs": "too many paragraphs (or too much of their text) repeating earlier ones (Gopher)",
    "top_ngram": "one word 2-, 3- or 4-gram covers too much of the text (Gopher)",
    "duplicate_ngrams": "too much text in repeated word 5- to 10-grams (Gopher)",
}


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def datacard(manifest: dict[str, Any]) -> str:
    """Render the data card of a corpus from its manifest (deterministic: no timestamps)."""
    cfg = manifest["config"]
    mh = manifest["dedup"]["minhash"]
    out = ["# Data card: corpus", ""]
    out += [
        f"{manifest['documents_kept']:,} documents kept of {manifest['documents_in']:,} read "
        f"({manifest['bytes_in']:,} bytes in, {manifest['bytes_out']:,} bytes of shards out, "
        f"{len(manifest['shards'])} shard(s)).",
        "",
        "## Sources",
        "",
        _table(["source (as given)"], [[f"`{s}`"] for s in cfg["sources"]]),
        "",
        f"{len(manifest['sources'])} files or archive members read; their sha256 are in `manifest.json`.",
        "",
        "## Counts",
        "",
    ]
    rows = [["read", manifest["documents_in"], ""], ["kept", manifest["documents_kept"], ""]]
    rows += [[f"dropped: {k}", v, _DROP_HELP.get(k, "")] for k, v in manifest["dropped"].items()]
    rows.append(["quarantined", len(manifest["quarantined"]), "unreadable or malformed input"])
    out += [
        _table(["", "documents", "why"], rows),
        "",
        "`read = kept + dropped + quarantined` holds exactly.",
        "",
    ]

    d = manifest["dedup"]
    out += [
        "## Deduplication",
        "",
        f"- Exact duplicates removed: **{d['exact_removed']}** (xxh3-128 of the cleaned text; "
        f"{'on' if cfg['exact_dedup'] else 'off'}).",
        f"- Near duplicates removed: **{d['near_removed']}** ({'on' if cfg['near_dedup'] else 'off'}; "
        f"MinHash over {mh['shingle_words']}-word shingles, {mh['num_perm']} permutations, LSH with "
        f"{mh['bands']} bands x {mh['rows']} rows, confirmed when the estimated Jaccard "
        f">= {mh['threshold']}).",
        "- The first document in source order is kept; later copies are dropped.",
        "- What counts as a near duplicate: the same text with small edits (a few words changed, a header "
        "added). Different editions in different spellings (e.g. a modern and a First Folio Shakespeare) "
        "share "
        "few exact word shingles, so their Jaccard is far below the threshold and both are kept: they are "
        "distinct text for a language model, not copies.",
        "",
    ]
    if d["near_examples"]:
        out += [
            _table(
                ["kept", "dropped", "est. Jaccard"],
                [[f"`{e['kept']}`", f"`{e['dropped']}`", e["jaccard"]] for e in d["near_examples"]],
            ),
            "",
        ]

    m = manifest["modifications"]
    out += [
        "## Cleaning and filters",
        "",
        f"- Unicode normalisation: {cfg['normalize']}; whitespace clean-up: {cfg['clean_whitespace']}.",
        f"- Project Gutenberg headers/licences stripped: {m['gutenberg_stripped']} kept documents "
        f"({'on' if cfg['strip_gutenberg'] else 'off'}).",
        f"- Quality: min_chars={cfg['min_chars']}, max_symbol_ratio={cfg['max_symbol_ratio']}, "
        f"max_repeated_line_fraction={cfg['max_repeated_line_fraction']}; Gopher rules "
        f"{'on' if cfg.get('quality_rules', True) else 'off'} (`nightshift config --fields data` lists "
        "their thresholds).",
        f"- Toxicity: blocklist `{cfg['toxicity_blocklist'] or 'built-in'}`, "
        f"> {cfg['toxicity_max_hits_per_1k_words']} hits per 1,000 words dropped "
        f"({'on' if cfg['toxicity_filter'] else 'off'}). A blocklist is a blunt instrument: it misses "
        "paraphrased toxicity and can drop fiction that quotes insults.",
        "",
        "## PII",
        "",
        f"Scrubbing {'on' if cfg['scrub_pii'] else 'off'}; replacements in kept documents:",
        "",
        _table(
            ["type", "replaced", "placeholder"],
            [
                [t, n, "<EMAIL>" if t == "email" else "<PHONE>" if t == "phone" else "<IP_ADDRESS>"]
                for t, n in m["pii_replaced"].items()
            ],
        ),
        "",
        "Regex-based: names and postal addresses are not detected.",
        "",
        "## Quarantine",
        "",
    ]
    q = manifest["quarantined"]
    if q:
        by_reason = Counter(e["reason"].split(":")[0] for e in q)
        out += [_table(["reason", "items"], sorted(by_reason.items())), ""]
        out += [_table(["item", "reason"], [[f"`{e['item']}`", e["reason"]] for e in q[:20]]), ""]
        if len(q) > 20:
            out += [f"... and {len(q) - 20} more in `manifest.json`.", ""]
    else:
        out += ["Nothing was quarantined.", ""]
    out += ["## Config", "", "```json", json.dumps(cfg, indent=2, ensure_ascii=False), "```", ""]
    return "\n".join(out)
