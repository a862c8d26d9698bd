"""Fixtures for evaluation tests: a live local OpenAI-compatible server and small question/answer files.

`fake_openai` starts `FakeOpenAI` on 127.0.0.1 and points OPENAI_BASE_URL / OPENAI_API_KEY at it, so nothing
can reach the internet; answer-generation and serving tests can use the same fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eval_samples import make_eval_files
from fake_openai import TEST_API_KEY, FakeOpenAI


@pytest.fixture
def fake_openai(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", TEST_API_KEY)
        for name in ("OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        yield server


@pytest.fixture
def eval_files(tmp_path: Path) -> dict[str, Any]:
    """Question, answer (three models) and reference files in FastChat's formats."""
    return make_eval_files(tmp_path)
