"""The prompts of `prompts.yaml`: versioned chat messages (never pre-templated special tokens)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

PROMPTS_FILE = Path(__file__).with_name("prompts.yaml")


@dataclass(frozen=True)
class Prompt:
    name: str
    version: int
    system: str
    user: str
    params: dict[str, Any]  # sampling parameters: temperature, max_tokens

    def messages(self, **values: Any) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": self.system.format(**values).strip()},
            {"role": "user", "content": self.user.format(**values).strip()},
        ]


@cache
def load_prompts(path: Path = PROMPTS_FILE) -> dict[str, Prompt]:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {name: Prompt(name=name, **spec) for name, spec in raw.items()}
