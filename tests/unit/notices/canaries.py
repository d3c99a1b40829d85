"""A fake thread whose every content-bearing field holds a canary that must never reach a notice."""
from __future__ import annotations

from types import MappingProxyType

# What a careless caller holds when it builds a notice: the message, its thread, both parties.
FAKE_THREAD = MappingProxyType(
    {
        "body": "Kanarybody: my biopsy results came back positive",
        "message": "Kanarymessage: douleurs thoraciques depuis hier",
        "subject": "Kanarysubject chimiothérapie cycle 3",
        "attachment_name": "kanary-irm-genou-droit.pdf",
        "attachment_names": "kanary-bilan-sanguin.pdf",
        "patient_name": "Kanarypatient Durand",
        "practitioner_name": "Dr Kanarypractitioner Lefèvre",
        "specialty": "Kanaryspecialty oncologie",
        "patient_email": "kanary.patient@example.org",
        "patient_phone": "+33612345678",
        "to": "kanary.to@example.org",
    }
)

# Distinctive fragments: any one of them in a notice means content leaked.
FRAGMENTS = (
    "kanary", "biopsy", "thoraciques", "chimioth", "irm-genou", "bilan-sanguin",
    "Durand", "Lefèvre", "oncologie", "example.org", "612345678",
)


def assert_clean(text: str | None) -> None:
    if text is None:
        return
    lowered = text.lower()
    for fragment in FRAGMENTS:
        assert fragment.lower() not in lowered, f"notice contains canary fragment {fragment!r}"
