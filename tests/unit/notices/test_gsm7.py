"""GSM-7 alphabet membership and segment counting, on texts whose costs are known from the standard."""
from __future__ import annotations

import pytest

from gateway.notices.gsm7 import is_gsm7, segments, septets, to_gsm7


@pytest.mark.parametrize("text", ["Bonjour à tous", "é è à ù ì ò É Ç ñ ß", "{[~]}|^€\\"])
def test_gsm7_letters_are_accepted(text: str) -> None:
    assert is_gsm7(text)


@pytest.mark.parametrize("ch", ["ç", "ê", "â", "î", "ô", "û", "ë", "ï", "œ", "’", "…", "😀", "\t", "`"])
def test_letters_outside_the_alphabet_are_refused(ch: str) -> None:
    assert not is_gsm7(f"abc{ch}def")


def test_extension_characters_count_two_septets() -> None:
    assert septets("a€[") == 5


def test_one_segment_holds_160_septets() -> None:
    assert segments("a" * 160) == 1
    assert segments("a" * 161) == 2
    assert segments("a" * 306) == 2
    assert segments("a" * 307) == 3
    # 80 euro signs are 160 septets: still one segment; one more letter tips it over.
    assert segments("€" * 80) == 1
    assert segments("€" * 80 + "a") == 2


def test_escape_pairs_are_not_split_across_segments() -> None:
    # 152 letters then a euro sign: 154 septets would fit 153 only by splitting the pair.
    text = "a" * 152 + "€" + "a" * 10
    assert segments(text) == 2
    assert segments("a" * 152 + "€" + "a" * 153) == 3


def test_non_gsm7_text_is_counted_as_ucs2() -> None:
    assert segments("ç" * 70) == 1
    assert segments("ç" * 71) == 2
    assert segments("ç" * 134) == 2
    assert segments("ç" * 135) == 3
    # Outside the BMP a character takes two UTF-16 units.
    assert segments("😀" * 35) == 1
    assert segments("😀" * 36) == 2


def test_names_are_spelled_in_gsm7() -> None:
    assert to_gsm7("Maison de santé Françoise Côté-Bœuf") == "Maison de santé Francoise Coté-Boeuf"
    assert to_gsm7("L’Hôtel-Dieu – Pôle «Santé»") == "L'Hotel-Dieu - Pole \"Santé\""
    assert is_gsm7(to_gsm7("Ærø Ñandú ÇA ÿ 漢"))
