"""The docs stay true to the code: every setting is documented, the quick start exists."""

from __future__ import annotations

import re
from pathlib import Path

from celery_leaderbeat.settings import SETTINGS

ROOT = Path(__file__).resolve().parent.parent


def _docs() -> str:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return "\n".join(page.read_text(encoding="utf-8") for page in pages)


def test_every_setting_is_documented_in_both_spellings() -> None:
    docs = _docs()
    missing = [
        name
        for setting in SETTINGS.values()
        for name in (setting.key, setting.django_name)
        if f"`{name}`" not in docs
    ]
    assert not missing, f"settings missing from README.md/docs: {missing}"


def test_quick_start_commands_exist() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("demo", "test"):
        assert f"make {target}" in readme
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), f"no '{target}' target"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    # CI runs both quick-start commands, the demo first on a .venv nothing else filled.
    assert ci.index("make demo") < ci.index("make test")


def test_the_redis_extra_brings_what_a_redis_broker_needs() -> None:
    """README: ``pip install "celery-leaderbeat[redis]"`` and a Redis broker works.
    redis-py alone is not enough: kombu's Redis transport needs kombu's own
    ``redis`` extra (with kombu 5.7, ``packaging``), which ``celery[redis]`` brings."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    redis_extra = re.search(r"^redis = \[(.*?)\]$", text, re.MULTILINE)
    assert redis_extra is not None
    assert '"celery[redis]"' in redis_extra.group(1)
