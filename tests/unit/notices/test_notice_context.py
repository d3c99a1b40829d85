"""The notice context refuses every field and value that could carry a message's content."""
from __future__ import annotations

import dataclasses

import pytest

from gateway.notices import NoticeContext

from tests.unit.notices.canaries import FAKE_THREAD, FRAGMENTS

LOGIN_URL = "https://portail.exemple.fr/l/" + "Tk3_-9" * 7


def test_the_context_has_only_content_free_fields() -> None:
    # Pinned on purpose: a new field must be argued for here, not slipped in.
    assert [f.name for f in dataclasses.fields(NoticeContext)] == [
        "practice_name", "locale", "login_url", "thread_code", "code", "emergency_numbers",
    ]


@pytest.mark.parametrize("field", sorted(FAKE_THREAD))
def test_there_is_no_field_for_content(field: str) -> None:
    with pytest.raises(TypeError):
        NoticeContext(practice_name="Cabinet Dupont", locale="fr", **{field: FAKE_THREAD[field]})  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["login_url", "thread_code", "code", "emergency_numbers"])
@pytest.mark.parametrize("canary", sorted(FAKE_THREAD.values()))
def test_typed_fields_refuse_content(field: str, canary: str) -> None:
    with pytest.raises(ValueError) as raised:
        NoticeContext(practice_name="Cabinet Dupont", locale="fr", **{field: canary})  # type: ignore[arg-type]
    message = str(raised.value).lower()
    assert field in message
    assert not any(fragment.lower() in message for fragment in FRAGMENTS)


@pytest.mark.parametrize(
    "login_url",
    [
        "https://portail.exemple.fr/l/short",
        "https://portail.exemple.fr/l/" + "a" * 30 + "?body=biopsy",
        "https://portail.exemple.fr/l/" + "a" * 30 + "\n",
        "ftp://portail.exemple.fr/l/" + "a" * 30,
        "https://portail exemple.fr/l/" + "a" * 30,
    ],
)
def test_login_url_must_be_a_login_link(login_url: str) -> None:
    with pytest.raises(ValueError, match="login_url"):
        NoticeContext(practice_name="Cabinet Dupont", locale="fr", login_url=login_url)


@pytest.mark.parametrize(
    "name",
    ["", "Cabinet Dupont\n" + FAKE_THREAD["body"], "Cabinet\tDupont", "x" * 81, FAKE_THREAD["body"] * 3],
)
def test_practice_name_is_one_short_line(name: str) -> None:
    # The practice name is the one free-text field: it must at least not hold a pasted message.
    with pytest.raises(ValueError, match="practice_name") as raised:
        NoticeContext(practice_name=name, locale="fr")
    assert "biopsy" not in str(raised.value)


@pytest.mark.parametrize("code", ["12345", "1234567", "12345a", " 123456"])
def test_code_is_six_digits(code: str) -> None:
    with pytest.raises(ValueError, match="code"):
        NoticeContext(practice_name="Cabinet Dupont", locale="fr", code=code)


@pytest.mark.parametrize("thread_code", ["A", "ABCDEFG", "ab12", "AB 12"])
def test_thread_code_is_short_upper_case(thread_code: str) -> None:
    with pytest.raises(ValueError, match="thread_code"):
        NoticeContext(practice_name="Cabinet Dupont", locale="fr", thread_code=thread_code)


@pytest.mark.parametrize("numbers", ["15, 112, 114", "15", "112 114", "15,112"])
def test_emergency_numbers_accept_lists_of_numbers(numbers: str) -> None:
    assert NoticeContext(practice_name="Cabinet Dupont", locale="fr", emergency_numbers=numbers).emergency_numbers == numbers


@pytest.mark.parametrize("numbers", ["", "15, ", "SAMU 15", "15\n112", "1" * 41])
def test_emergency_numbers_refuse_anything_else(numbers: str) -> None:
    with pytest.raises(ValueError, match="emergency_numbers"):
        NoticeContext(practice_name="Cabinet Dupont", locale="fr", emergency_numbers=numbers)


def test_locale_is_fr_or_en() -> None:
    with pytest.raises(ValueError, match="locale"):
        NoticeContext(practice_name="Cabinet Dupont", locale="de")  # type: ignore[arg-type]


def test_the_context_is_frozen() -> None:
    ctx = NoticeContext(practice_name="Cabinet Dupont", locale="en", login_url=LOGIN_URL, thread_code="AB12", code="123456")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.practice_name = FAKE_THREAD["patient_name"]  # type: ignore[misc]
