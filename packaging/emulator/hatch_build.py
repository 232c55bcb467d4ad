"""Hatch metadata hook: the emulator requires the library at exactly its own version.

The version lives in one place (relay/__init__.py); this hook reads it (hatch has already put
it in ``metadata["version"]``) and pins ``hybridconnections`` to it, next to the emulator's
own dependency ranges.
"""

from hatchling.metadata.plugin.interface import MetadataHookInterface

DEPENDENCIES = [
    "aiohttp>=3.9,<4",
    "PyJWT>=2.8,<3",        # RS256 tokens of the managed-identity endpoint
    "cryptography>=42",     # the local CA, TLS leaf and signing key
]


class EmulatorMetadata(MetadataHookInterface):
    def update(self, metadata: dict) -> None:
        metadata["dependencies"] = [f"hybridconnections=={metadata['version']}", *DEPENDENCIES]
