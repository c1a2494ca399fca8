"""Cleaning and filters, without Ray."""

from __future__ import annotations

from core.data_config import DataConfig
from tests.training.data.conftest import make_text
from training.data.clean import clean_whitespace, normalize, scrub_pii, strip_gutenberg
from training.data.filters import quality_reason, repeated_line_fraction, symbol_ratio, toxicity_reason


def test_whitespace_and_normalisation():
    assert clean_whitespace("a  \r\nb\t\r\n\n\n\n\nc  ") == "a\nb\n\nc"
    assert normalize("e\u0301", "NFC") == "\u00e9"
    assert normalize("\ufb01", "NFKC") == "fi"
    assert normalize("e\u0301", "none") == "e\u0301"


def test_gutenberg_modern_markers_stripped():
    body = "It was a bright cold day in April."
    text = (
        "The Project Gutenberg eBook of Something\n\nLicence blah.\n"
        "*** START OF THE PROJECT GUTENBERG EBOOK SOMETHING ***\n\n"
        f"{body}\n\n*** END OF THE PROJECT GUTENBERG EBOOK SOMETHING ***\nMore licence text."
    )
    out, stripped = strip_gutenberg(text)
    assert stripped and out == body


def test_gutenberg_old_small_print_stripped():
    body = "ACT I. Scene I. A room in the castle."
    text = (
        "The Project Gutenberg Etext of Hamlet\nSmall print...\n"
        "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n\n"
        f"{body}\n\nEnd of Project Gutenberg's Etext of Hamlet\n"
    )
    out, stripped = strip_gutenberg(text)
    assert stripped and out == body
    assert strip_gutenberg("No markers here.") == ("No markers here.", False)


def test_pii_scrubbed_and_counted():
    text = (
        "Mail jane.doe+x@example.co.uk or call +1 415-555-0132 or (020) 7946 0958. "
        "Server 192.168.1.20 and 2001:db8::8a2e:370:7334 are down."
    )
    out, counts = scrub_pii(text)
    assert "example" not in out and "192.168" not in out and "2001:db8" not in out and "555" not in out
    assert out.count("<EMAIL>") == 1 and out.count("<IP_ADDRESS>") == 2 and out.count("<PHONE>") == 2
    assert counts == {"email": 1, "phone": 2, "ipv4": 1, "ipv6": 1}


def test_pii_leaves_ordinary_numbers_alone():
    text = "In 1599, at 12:30:45, chapter 3.2 had 40 pages; a::b is C++ and version 1.2.3 ships."
    out, counts = scrub_pii(text)
    assert out == text and not counts


def test_quality_filters():
    cfg = DataConfig(min_chars=50)
    good = make_text(1, 80)
    assert quality_reason(good, cfg) is None
    assert quality_reason("too short", cfg) == "too_short"
    assert symbol_ratio("@@##$$ ab") > 0.5
    assert quality_reason("#$%&*!@ " * 20, cfg) == "symbol_ratio"
    spam = "\n".join(["buy cheap watches online today"] * 10 + ["hello"])
    assert repeated_line_fraction(spam) > 0.8
    assert quality_reason(spam, cfg) == "repeated_lines"
    play = "\n".join(
        f"Ham.\nLine number {i} of a long speech that does not repeat itself." for i in range(20)
    )
    assert quality_reason(play, cfg) is None


def test_toxicity_blocklist(tmp_path):
    cfg = DataConfig()
    toxic = "You idiot, shut up. " * 5 + make_text(2, 40)
    assert toxicity_reason(toxic, cfg) == "toxicity"
    assert toxicity_reason(make_text(3, 200), cfg) is None
    custom = tmp_path / "block.txt"
    custom.write_text("# custom\nriver\n")
    cfg2 = DataConfig(toxicity_blocklist=str(custom), toxicity_max_hits_per_1k_words=0.0)
    assert toxicity_reason("the river runs " * 10, cfg2) == "toxicity"
    assert toxicity_reason("the river runs " * 10, DataConfig(toxicity_filter=False)) is None


def test_toxicity_gate_matches_full_regex():
    from training.data.dedup import lower_words
    from training.data.filters import load_blocklist, toxicity_hits

    cfg = DataConfig(toxicity_max_hits_per_1k_words=0.0)
    pattern = load_blocklist(None)
    texts = [
        make_text(1),
        make_text(2) + " You IDIOT, shut\n up! I  hate you.",
        "stupid idiot " * 5,
        "idiots and shut-up and i hate, you",
        "Café idiot\u00e9 go to hell",
        "lo\u017fer",  # long s: IGNORECASE matches it to "s", so the regex decides
    ]
    for text in texts:
        hits, _ = toxicity_hits(text, pattern)
        expected = "toxicity" if hits else None
        assert toxicity_reason(text, cfg) == expected, text
        assert toxicity_reason(text, cfg, lower_words(text)) == expected, text


def test_pii_gate_keeps_numbers_that_are_not_pii():
    text = "Act 3, Scene 2. In 1599 the 12:30 show; line 4.5 and 3.14."
    assert scrub_pii(text) == (text, {})
    out, counts = scrub_pii("call 555-123-4567 or +4915112345678 or 10.0.0.1")
    assert counts == {"phone": 2, "ipv4": 1}, (out, counts)
