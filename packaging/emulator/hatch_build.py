"""Hatch hooks for the emulator distribution.

* Metadata: the emulator requires the library at exactly its own version. The version lives in
  one place (relay/__init__.py; an sdist carries it in PKG-INFO); hatch has already put it in
  ``metadata["version"]``, and this hook pins ``hybridconnections`` to it next to the emulator's
  own dependency ranges.
* Build: in the repository the code is the top-level ``emulator/`` folder, two levels up; it is
  force-included into the sdist and the wheel. Inside an sdist it is already next to this file.
"""

from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface
from hatchling.metadata.plugin.interface import MetadataHookInterface

DEPENDENCIES = [
    "aiohttp>=3.9,<4",
    "PyJWT>=2.8,<3",        # RS256 tokens of the managed-identity endpoint
    "cryptography>=42",     # the local CA, TLS leaf and signing key
]


class EmulatorMetadata(MetadataHookInterface):
    def update(self, metadata: dict) -> None:
        metadata["dependencies"] = [f"hybridconnections=={metadata['version']}", *DEPENDENCIES]


class EmulatorSources(BuildHookInterface):
    def initialize(self, version: str, build_data: dict) -> None:
        if (Path(self.root) / "emulator").is_dir():  # building from an sdist
            return
        source = (Path(self.root) / ".." / ".." / "emulator").resolve()
        if not (source / "__main__.py").is_file():
            raise FileNotFoundError(f"the emulator sources are not at {source}: build from the repository or an sdist")
        build_data["force_include"][str(source)] = "emulator"
