"""A Ray worker setup hook for the isolation drill.

Decoding an object whose bytes start with b"POISON" kills the worker process at once, as the
kernel's out-of-memory killer or a crash in native decoding code would.
"""

import os


def install() -> None:
    """Wrap the per-image steps' decode_image in this worker process."""
    import workers.labelling.steps as labeler

    real = labeler.decode_image

    def decode(data: bytes, name: str, max_pixels: int, hold=None):
        if data.startswith(b"POISON"):
            os._exit(1)
        return real(data, name, max_pixels, hold)

    labeler.decode_image = decode
