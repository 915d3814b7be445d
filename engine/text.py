"""How the user-side text is built: one rule shared by fine-tuning and serving.

The two-tower encoder is fine-tuned on user texts built this way, so the engine must
build them identically (``explorank.export.data`` re-exports this function)."""

from __future__ import annotations

from collections.abc import Sequence


def user_context_text(history_texts: Sequence[str], context_text: str = "") -> str:
    """Optional free context, then the texts of the user's recent items, most recent
    first, joined by single spaces."""
    parts = [context_text.strip()] if context_text.strip() else []
    parts += [t.strip() for t in history_texts if t.strip()]
    return " ".join(parts)
