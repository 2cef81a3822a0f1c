"""What the tests share: helpers, servers on loopback, fault injection, tool lookups, synthetic runs."""

from pathlib import Path

#: The repository's root folder.
ROOT = Path(__file__).resolve().parents[2]
