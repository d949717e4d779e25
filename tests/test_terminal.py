"""test.py's text output escapes control characters of taxon and file names, as --json does (issue 17, item 18)."""
import json
import unicodedata

from amanita.identify import format_human

ESC = "\x1b[31;1m"  # an ANSI escape: recolours the terminal when printed raw


def _record(name: str) -> dict:
    lineage = [{"rank": r, "name": f"{name} {r}", "confidence": 0.9, "rank_confidence": 0.9}
               for r in ("phylum", "class", "order", "family", "genus", "species")]
    topk = [{"species": name, "scientificName": name + "\u202e", "category_id": 0, "probability": 0.9,
             "poisonous": True}]
    return {"path": f"photo{ESC}.jpg", "lineage": lineage, "topk": topk, "backoff": lineage[-1],
            "poisonous_in_topk": True, "unknown_species": True, "unknown_score": 0.9,
            "answer": f"an unknown species of genus {name}"}


def test_text_output_has_no_control_characters_and_shows_them_escaped():
    text = format_human(_record(f"Amanita{ESC}evil\x07"), top_k=1, backoff=0.5)
    assert not any(ord(c) < 0x20 and c != "\n" or c in "\x7f\u202e" for c in text)
    assert "Amanita\\x1b[31;1mevil\\x07" in text and "photo\\x1b[31;1m.jpg" in text and "\\u202e" in text


def test_json_output_escapes_them_too_and_plain_names_are_unchanged():
    from amanita.identify import terminal_safe
    assert "\x1b" not in json.dumps(_record(f"A{ESC}"), ensure_ascii=False)
    assert terminal_safe("Amanita phalloides (Vaill. ex Fr.) Link – Knollenblätterpilz") == \
        "Amanita phalloides (Vaill. ex Fr.) Link – Knollenblätterpilz"
    assert terminal_safe("a\tb\nc") == "a\\x09b\\x0ac"
    escaped = terminal_safe("".join(map(chr, range(0x3000))))
    assert not [c for c in escaped if unicodedata.category(c) in ("Cc", "Cf")]
