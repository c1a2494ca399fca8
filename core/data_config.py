"""Config of the data stages: ingestion (cleaning, dedup, filters), tokenizer and token shards."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.config_base import Section


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
        return out
