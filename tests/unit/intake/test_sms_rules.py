"""The SMS pipeline's pure rules: keywords, leading thread codes, which media URLs may be fetched, and
the webhook signature check against Twilio's published test vectors."""
from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.ingress.sms import SignedForm, Signatures
from gateway.intake.mms import MediaRef, _host_allowed, media_path
from gateway.intake.sms import keyword_of, leading_code

# https://github.com/twilio/twilio-python tests/unit/test_request_validator.py (Twilio's documented example)
VECTOR_TOKEN = "12345"
VECTOR_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
VECTOR_PARAMS = {
    "CallSid": "CA1234567890ABCDE", "Digits": "1234", "From": "+14158675309", "To": "+18005551212",
    "Caller": "+14158675309",
}
VECTOR_SIGNATURE = "RSOYDt4T1cUTdK1PDd93/VVr8B8="
VECTOR_BODY = '{"property": "value", "boolean": true}'
VECTOR_BODY_HASH = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
VECTOR_BODY_SIGNATURE = "a9nBmqA0ju/hNViExpshrM61xv4="

ACCOUNT = "AC" + "a" * 32
MESSAGE = "MM" + "b" * 32
MEDIA = "ME" + "c" * 32


def signatures(**tokens: str) -> Signatures:
    return Signatures(Settings(data_dir=Path("/nonexistent"), **tokens))  # type: ignore[arg-type]


def test_twilio_published_vectors_pass_with_either_token():
    form = SignedForm(list(VECTOR_PARAMS.items()))
    assert signatures(twilio_auth_token=VECTOR_TOKEN).valid(VECTOR_URL, form, VECTOR_SIGNATURE)
    rotated = signatures(twilio_auth_token="new-token", twilio_auth_token_secondary=VECTOR_TOKEN)
    assert rotated.valid(VECTOR_URL, form, VECTOR_SIGNATURE)
    assert rotated.valid(VECTOR_URL + "&bodySHA256=" + VECTOR_BODY_HASH, VECTOR_BODY, VECTOR_BODY_SIGNATURE)
    assert not signatures(twilio_auth_token="other").valid(VECTOR_URL, form, VECTOR_SIGNATURE)
    assert not signatures(twilio_auth_token=VECTOR_TOKEN).valid(VECTOR_URL, form, "")
    assert not signatures().valid(VECTOR_URL, form, VECTOR_SIGNATURE)  # no token configured: nothing is signed
    tampered = SignedForm(list((VECTOR_PARAMS | {"Digits": "9999"}).items()))
    assert not signatures(twilio_auth_token=VECTOR_TOKEN).valid(VECTOR_URL, tampered, VECTOR_SIGNATURE)


def test_signed_url_is_the_public_url_not_the_request_host():
    checks = signatures(twilio_auth_token="t", public_url="https://gw.example.org/")
    assert checks.url_for("/webhooks/twilio/sms", "") == "https://gw.example.org/webhooks/twilio/sms"
    assert checks.url_for("/webhooks/twilio/sms", "a=1") == "https://gw.example.org/webhooks/twilio/sms?a=1"


@pytest.mark.parametrize(
    ("body", "keyword"),
    [
        ("STOP", "stop"), ("stop", "stop"), ("  Stop.  ", "stop"), ("STOPALL", "stop"), ("unsubscribe", "stop"),
        ("Cancel", "stop"), ("END", "stop"), ("quit!", "stop"), ("ARRÊT", "stop"), ("arrêt", "stop"), ("Arret", "stop"),
        ("START", "start"), ("Yes", "start"), ("unstop", "start"), ("HELP", "help"), ("Aide", "help"), ("AÏDE", "help"),
        ("stop please", None), ("please stop", None), ("STOP STOP", None), ("", None), ("arrête", None), ("oui", None),
    ],
)
def test_keywords_are_whole_messages_without_case_or_accents(body: str, keyword: str | None):
    assert keyword_of(body) == keyword


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("#K3 bonjour", ("K3", "bonjour")),
        ("#k3: bonjour", ("K3", "bonjour")),
        ("# k3 bonjour", ("K3", "bonjour")),
        ("K3 bonjour", ("K3", "bonjour")),
        ("k3, bonjour", ("K3", "bonjour")),
        ("#K3", ("K3", "")),
        ("JE suis là", ("JE", "suis là")),  # typed in capitals, as the notice shows it
        ("#je suis là", ("JE", "suis là")),
        ("Je suis là", None),  # a word, not a code
        ("je suis là", None),
        ("K3bonjour", None),
        ("#ZZ bonjour", None),  # not one of the patient's codes
        ("bonjour #K3", None),  # not leading
    ],
)
def test_leading_thread_code(body: str, expected: tuple[str, str] | None):
    assert leading_code(body, {"K3", "JE"}) == expected


def test_media_urls_are_fetched_from_twilio_only():
    url = f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT}/Messages/{MESSAGE}/Media/{MEDIA}"
    kw = {"api_base": "https://api.twilio.com", "account_sid": ACCOUNT, "message_sid": MESSAGE}
    assert media_path(url, **kw) == url.removeprefix("https://api.twilio.com")
    assert media_path(url + ".json", **kw) == url.removeprefix("https://api.twilio.com")
    for bad in (
        url.replace("https://", "http://"),
        url.replace("api.twilio.com", "api.twilio.com.evil.test"),
        url.replace("api.twilio.com", "evil.test"),
        url.replace("api.twilio.com", "api.twilio.com:8443"),
        url.replace("api.twilio.com", "user:pw@api.twilio.com"),
        url.replace(ACCOUNT, "AC" + "f" * 32),  # another account
        url.replace(MESSAGE, "MM" + "f" * 32),  # another message
        url + "?redirect=https://evil.test",
        url.replace("/Media/", "/Media/../../Media/"),
    ):
        assert media_path(bad, **kw) is None, bad
    # Twilio's redirect to its CDN is followed, nothing else; a stand-in allows exactly its own origin.
    assert _host_allowed("https", "mms.twiliocdn.com", "https://api.twilio.com", redirect=True)
    assert _host_allowed("https", "media.twilio.com", "https://api.twilio.com", redirect=True)
    assert not _host_allowed("https", "mms.twiliocdn.com", "https://api.twilio.com", redirect=False)
    assert not _host_allowed("https", "s3.amazonaws.com", "https://api.twilio.com", redirect=True)
    assert not _host_allowed("https", "eviltwilio.com", "https://api.twilio.com", redirect=True)
    assert _host_allowed("http", "127.0.0.1:5000", "http://127.0.0.1:5000", redirect=True)
    assert not _host_allowed("http", "127.0.0.1:5001", "http://127.0.0.1:5000", redirect=True)
    assert not _host_allowed("https", "api.twilio.com", "http://127.0.0.1:5000", redirect=False)


def test_media_names_come_from_position_and_declared_type():
    assert MediaRef(0, "u", "image/jpeg").filename == "mms-1.jpg"
    assert MediaRef(1, "u", "image/png").filename == "mms-2.png"
    assert MediaRef(2, "u", "application/pdf").filename == "mms-3.pdf"
    assert MediaRef(3, "u", "video/mp4").filename == "mms-4.mp4"
    assert MediaRef(4, "u", "").filename == "mms-5.bin"
