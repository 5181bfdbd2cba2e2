"""A chat as files to download (JSON and Markdown); conversations.read_file reads them back."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path


def to_markdown(messages: list[dict]) -> str:
    names = {"user": "User", "assistant": "Assistant"}
    return "\n\n".join(f"**{names[m['role']]}:**\n\n{m['content']}" for m in messages) + "\n"


def folder_for(session: str) -> Path:
    """One folder per browser session, rewritten on each change and removed when the tab
    closes, so a long-running server does not pile up files. The client chooses the session
    id, so the folder is named by its digest: no id names the shared root or another
    session's folder. An empty id has no folder of its own: ValueError."""
    if not session:
        raise ValueError("no session id")
    digest = hashlib.sha256(session.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return Path(tempfile.gettempdir()) / "phi3ui-downloads" / digest


def write_files(messages: list[dict], session: str) -> tuple[str, str]:
    """chat.json and chat.md for the session's chat; their paths."""
    folder = folder_for(session)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "chat.json").write_text(json.dumps(messages, ensure_ascii=False, indent=2))
    (folder / "chat.md").write_text(to_markdown(messages))
    return str(folder / "chat.json"), str(folder / "chat.md")


def remove_files(session: str) -> None:
    shutil.rmtree(folder_for(session), ignore_errors=True)
