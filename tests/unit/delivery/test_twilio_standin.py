"""The Twilio stand-in's media resources speak the wire format the official client expects."""
from __future__ import annotations

import requests

from gateway.delivery import twilio_client
from tests.support.twilio_standin import TwilioStandIn

MMS = "MM" + "1" * 32
MEDIA = "ME" + "2" * 32


def test_media_is_served_with_credentials_then_deleted(twilio_standin: TwilioStandIn) -> None:
    url = twilio_standin.add_media(MMS, MEDIA, b"\x89PNG fake image", "image/png")
    credentials = (twilio_standin.account_sid, twilio_standin.auth_token)

    assert requests.get(url, timeout=5).status_code == 401
    response = requests.get(url, auth=credentials, timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/png"
    assert response.content == b"\x89PNG fake image"

    client = twilio_client(*credentials, twilio_standin.base_url, timeout=5)
    media = client.api.v2010.accounts(twilio_standin.account_sid).messages(MMS).media(MEDIA)
    assert media.fetch().content_type == "image/png"
    assert media.delete() is True
    assert twilio_standin.deleted_media == [(MMS, MEDIA)]
    assert requests.get(url, auth=credentials, timeout=5).status_code == 404
    assert [r.method for r in twilio_standin.requests] == ["GET", "GET", "GET", "DELETE", "GET"]
