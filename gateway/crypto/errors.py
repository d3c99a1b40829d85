"""The one opaque error for data that does not decrypt or verify."""
from gateway.errors import GatewayError


class DecryptionError(GatewayError):
    """Ciphertext that is tampered with, moved to another row, or sealed under an unknown key."""

    def __init__(self) -> None:
        super().__init__("data could not be decrypted")
