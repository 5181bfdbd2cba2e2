"""Many conversations, kept in the browser: what one is, and every rule for keeping them.

Where they are kept: the browser's localStorage, one entry per conversation (key
`phi3ui:conversation:<id>`, the record below as JSON), never on the server, so replicas stay
stateless and visitors of a public demo never see each other's chats. The page's JavaScript
(phi3ui/ui/static/storage.js) only reads, writes and removes entries; everything decided about them is here.

A record is one conversation:

    {"id": "c…", "title": "…", "renamed": false, "created": ms, "updated": ms, "rev": "…",
     "messages": [{"role": "user" | "assistant", "content": "text as typed",
                   "attachments": [{"name": "notes.txt", "size": bytes, "text": "its text"}, …]}, …],
     "settings": {"max_new_tokens": …, "temperature": …, "top_p": …, "top_k": …,
                  "repetition_penalty": …, "seed": …, "system_prompt": "…", "answer_json": …,
                  "json_schema": "…"},  (settings.GENERATION_TABLE's names and types)
     "preset": "…"}  (the chat preset it uses, by name; "" or absent in older records: none)

A message where the conversation has other versions (a retry or an edit kept the earlier
answer or branch) also holds them: `"versions": [branch, …]`, the other branches from this
message on (each a list of messages like these, which may hold versions of their own further
down), and `"version": n`, this branch's place among all of them (0-based), so ‹ n/m › keeps its
order. `messages` itself is always the branch on screen, the one the model reads; a record
without versions (every one written before them) is a conversation with one branch.
phi3ui/versions.py works on this tree.

Times are milliseconds since 1970. A message with `"metadata": {"title": …}` is one of the
page's notes (an answer's time to first token, speed and token counts; "Stopped"); the model
never reads those. `attachments` (user messages only, optional) are the files sent with the
message (phi3ui/attachments.py): their text as the model read it, not the file itself (a
PDF keeps only its text), so the page shows each as a chip again and the model reads it on
later turns. They are stored and exported with the message, and count against the browser's
storage (about 5 MB per site; a message with its files is at most `Limits.max_message_chars`
characters). When a write does not fit, storage.js reports the quota error and the page says
the storage is full (conversation_list.STORAGE_FULL): that change, files and all, is not
saved, what was saved before is kept, and the chat stays on screen (Download JSON still has
it). The title is the first message's start until the user renames it. `rev` changes on
every write; it is what tells a tab that another one changed the conversation.

The file of all conversations is `{"format": "phi3ui-conversations", "version": 1,
"exported": ms, "conversations": [record, …], "presets": [chat preset, …]}`, `presets` being
the visitor's own chat presets (phi3ui/chat_presets.py; absent from older files, which load as
before). Loading one merges it (`merge`): a conversation already there (the same id, or the
same messages on screen) is not added twice, and of two versions of one id the later-updated one
is kept; presets merge by name the same way (chat_presets.merge). A single chat's JSON download
(a list of {role, content} messages) loads as one conversation by the same rule.

Two tabs of one browser share the storage. The rule:
- A tab writes only the conversation it shows, and removes only one the user deletes in it,
  so it never overwrites or removes another tab's other conversations; each tab's list
  follows the storage (the browser tells the other tabs of every write).
- When the conversation on screen is changed in another tab, an idle tab shows the new
  version. If this tab changed it too (both answered at once), its write finds a `rev` it did
  not read: its version is saved as a new conversation, titled "… (copy)" (`conflict_copy`),
  and the page says so. Both versions are kept; neither tab overwrites the other, even when
  both save at the same moment where the browser has IndexedDB (storage.js checks and writes
  in one IndexedDB transaction).
- A conversation deleted in one tab stays on screen in another; if that tab goes on with it,
  it is saved again.

No Gradio here: the page (phi3ui/ui/conversation_list.py) turns these records into what it shows.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from . import chat_presets
from . import prompt as prompts
from . import versions as branches
from .attachments import Attachment
from .display import file_message, from_display, shown, to_display, with_files
from .settings import PAGE_SETTINGS, stored_values

FORMAT = "phi3ui-conversations"
VERSION = 1
STORAGE_PREFIX = "phi3ui:conversation:"  # + id: one localStorage entry per conversation
NEW_TITLE = "New chat"
TITLE_CHARS = 48  # an automatic title: the first message's first words, at most this long
MAX_TITLE_CHARS = 200  # a title given by hand
COPY_SUFFIX = " (copy)"
SETTINGS = PAGE_SETTINGS  # what a record keeps: settings.GENERATION_TABLE's names
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_DEPTH = 200  # versions inside versions a record may hold (each later in its branch)


class ConversationError(ValueError):
    """A file or entry that is not a conversation phi3ui can read; the text says why."""


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id() -> str:
    return "c" + secrets.token_hex(8)


def new_rev() -> str:
    return secrets.token_hex(6)


# --- messages: the page's display <-> a record's -----------------------------------------
def record_messages(display: list) -> list[dict]:
    """The chat on screen as a record keeps it: the text as typed (the page shows it
    escaped), notes kept with their title so the stats come back with the conversation."""
    kept = []
    for m, files in with_files([m for m in display or [] if isinstance(m, dict)]):
        if m.get("role") not in ("user", "assistant"):
            continue
        try:
            text = from_display(prompts.message_text(m.get("content", "")))
        except prompts.PromptError:
            continue
        item = {"role": m["role"], "content": text}
        title = (m.get("metadata") or {}).get("title") if isinstance(m.get("metadata"), dict) else None
        if title:
            item["metadata"] = {"title": from_display(str(title))}
        if files:
            item["attachments"] = [f.record() for f in files]
        kept.append(item)
    return kept


def record_index(display: list, index: int) -> int:
    """Where the message shown at `index` is in `record_messages(display)`: a file shown
    under a message is part of it, so the page's indices run ahead of a record's."""
    return len(record_messages(display[: index + 1])) - 1


def display_messages(messages: list[dict]) -> list[dict]:
    """A record's messages as the page shows them. Everything is escaped, notes too: a
    record may come from a file someone sent, and nothing in it may run as markup."""
    items = []
    for m in messages:
        item: dict[str, Any] = {"role": m["role"], "content": shown(m["content"])}
        if m.get("metadata"):
            item["metadata"] = {"title": to_display(m["metadata"]["title"]), "status": "done"}
        items.append(item)
        items += [file_message(Attachment.from_record(a)) for a in m.get("attachments", [])]
    return items


def chat_of(messages: list[dict]) -> list[dict]:
    """The exchange itself, notes left out: what the model reads and what makes two
    conversations the same."""
    return [{key: m[key] for key in ("role", "content", "attachments") if key in m}
            for m in messages if not m.get("metadata")]


def fingerprint(messages: list[dict]) -> str:
    return hashlib.sha256(json.dumps(chat_of(messages), ensure_ascii=False).encode()).hexdigest()


def title_for(messages: list[dict]) -> str:
    """The first user message's start, on one line, cut at a word near TITLE_CHARS."""
    first = next((m["content"] or " ".join(a["name"] for a in m.get("attachments", []))
                  for m in messages if m["role"] == "user" and not m.get("metadata")), "")
    text = " ".join(first.split())
    if not text:
        return NEW_TITLE
    if len(text) <= TITLE_CHARS:
        return text
    cut = text[:TITLE_CHARS]
    cut = cut[: cut.rfind(" ")] if " " in cut[TITLE_CHARS // 2:] else cut
    return cut.rstrip(" ,.;:") + "…"


# --- a record ----------------------------------------------------------------------------
def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ConversationError(f"{what} must be text.")
    return value


def _clean_messages(value: Any, depth: int = 0) -> list[dict]:
    if not isinstance(value, list):
        raise ConversationError("A conversation's messages must be a list.")
    messages = []
    for item in value:
        if not isinstance(item, dict) or item.get("role") not in ("user", "assistant"):
            raise ConversationError("Each message must be a {role: user|assistant, content} object.")
        try:
            content = prompts.message_text(item.get("content"))
        except prompts.PromptError as exc:
            raise ConversationError(str(exc)) from None
        message: dict[str, Any] = {"role": item["role"], "content": content}
        metadata = item.get("metadata")
        if isinstance(metadata, dict) and metadata.get("title"):
            message["metadata"] = {"title": _text(metadata["title"], "A note's title")}
        files = _clean_attachments(item.get("attachments"), message)
        if files:
            message["attachments"] = files
        if item.get("versions"):
            message.update(_clean_versions(item["versions"], item.get("version", 0), depth))
        messages.append(message)
    return messages


def _clean_versions(others: Any, version: Any, depth: int) -> dict:
    """A message's other versions (branches from it on) and its own place among them."""
    if depth >= MAX_DEPTH:
        raise ConversationError(f"A conversation's versions are nested more than {MAX_DEPTH} deep.")
    if not isinstance(others, list):
        raise ConversationError("A message's versions must be a list of branches (lists of messages).")
    kept = [_clean_messages(branch, depth + 1) for branch in others]
    if not all(kept):
        raise ConversationError("A message's version has no messages.")
    if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version <= len(kept):
        raise ConversationError(f"A message's version must be a number from 0 to {len(kept)} "
                                "(its place among its versions).")
    return {"versions": kept, "version": version}


def _clean_attachments(value: Any, message: dict) -> list[dict]:
    """A user message's files, each {name, size, text}; anything else is not a conversation."""
    if value is None:
        return []
    if not isinstance(value, list) or (value and (message["role"] != "user" or message.get("metadata"))):
        raise ConversationError("Only a user message may have attachments, as a list of {name, size, text}.")
    try:
        return [Attachment.from_record(a).record() for a in value]
    except ValueError as exc:
        raise ConversationError(str(exc)) from None


def _time(value: Any, default: int) -> int:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    return int(value) if ok else default


def clean(record: Any, now: int | None = None) -> dict:
    """A record as this module writes it, from whatever was stored or loaded; a
    ConversationError when it is not a conversation at all."""
    if not isinstance(record, dict):
        raise ConversationError("A conversation must be an object.")
    rid = record.get("id")
    if not isinstance(rid, str) or not _ID.match(rid):
        raise ConversationError("A conversation needs an id of letters, digits, '-' or '_'.")
    messages = _clean_messages(record.get("messages", []))
    given = record.get("title")
    given = " ".join(given.split())[:MAX_TITLE_CHARS] if isinstance(given, str) else ""
    renamed = record.get("renamed") is True and bool(given)
    # An automatic title is always the first message's start, whatever a file says.
    title = given if renamed else title_for(messages) if messages else given or NEW_TITLE
    now = now_ms() if now is None else now
    created = _time(record.get("created"), now)
    return {
        "id": rid, "title": title, "renamed": renamed, "created": created,
        "updated": _time(record.get("updated"), created),
        "rev": record["rev"] if isinstance(record.get("rev"), str) else "",
        "messages": messages, "settings": stored_values(record.get("settings")),
        "preset": chat_presets.name_or_none(record.get("preset")),
    }


def readable(records: Any) -> list[dict]:
    """The records among what the browser sent that are conversations; the rest (an entry
    another version wrote, a damaged one) is left alone in storage and out of the list."""
    kept = []
    for item in records if isinstance(records, list) else []:
        try:
            kept.append(clean(item))
        except ConversationError:
            continue
    return kept


def new_meta(title: str = "", renamed: bool = False, preset: str = "") -> dict:
    """What the page keeps about the conversation on screen before it is saved."""
    return {"id": new_id(), "title": title, "renamed": renamed, "preset": preset}


def meta_of(record: dict) -> dict:
    return {"id": record["id"], "title": record["title"], "renamed": record["renamed"],
            "preset": record.get("preset", "")}


def build(meta: dict, display: list, settings: dict, stored: dict | None, now: int | None = None,
          versions: dict | None = None) -> dict | None:
    """The record to write for the chat on screen with its other versions (the page's
    `versions` state), or None when there is nothing to write: an empty chat (a new one is
    listed once it has a message), or one identical to what is stored. `updated` (the list's
    order and "last used") moves only when the messages change, not when a setting or the
    title does."""
    now = now_ms() if now is None else now
    messages = record_messages(display)
    try:  # the versions as a record keeps them; if the page sent something else, the chat alone
        messages = _clean_messages(branches.nest(messages, versions))
    except ConversationError:
        pass
    if not messages:
        return None
    renamed = bool(meta.get("renamed") and meta.get("title"))
    title = " ".join(str(meta["title"]).split())[:MAX_TITLE_CHARS] if renamed else title_for(messages)
    settings = stored_values(settings)
    preset = chat_presets.name_or_none(meta.get("preset"))
    if stored is not None:
        same = (stored["messages"] == messages, stored["settings"] == settings, stored["title"] == title,
                stored["renamed"] == renamed, stored.get("preset", "") == preset)
        if all(same):
            return None
        created, updated = stored["created"], stored["updated"] if same[0] else now
    else:
        created = updated = now
    return {"id": meta["id"], "title": title, "renamed": renamed, "created": created, "updated": updated,
            "rev": new_rev(), "messages": messages, "settings": settings, "preset": preset}


def conflict_copy(record: dict) -> dict:
    """What a record becomes when another tab changed its conversation meanwhile (the
    two-tabs rule): a new conversation beside the other tab's version."""
    title = record["title"] if record["title"].endswith(COPY_SUFFIX) else record["title"] + COPY_SUFFIX
    return {"id": new_id(), "title": title, "renamed": True}


def stopped(display: list, streaming: bool, why: str) -> list:
    """The chat as it is kept when the user leaves it while its answer is on its way: the
    text so far with a note saying it stopped, so the conversation never ends mid-sentence
    without a word and the answer never lands in another conversation."""
    if not streaming or not display:
        return display
    answered = display[-1].get("role") == "assistant" and not (display[-1].get("metadata") or {}).get("title")
    title = "⏹ Stopped" if answered else "⏹ Stopped before it started"
    return [*display, {"role": "assistant", "content": why, "metadata": {"title": title, "status": "done"}}]


# --- the list ----------------------------------------------------------------------------
def ordered(records: list[dict]) -> list[dict]:
    """Newest (last updated) first."""
    return sorted(records, key=lambda r: (r["updated"], r["created"], r["id"]), reverse=True)


def last_used(updated: int, now: int | None = None) -> str:
    """When a conversation was last used, as the list shows it."""
    now = now_ms() if now is None else now
    seconds = max(0, (now - updated) // 1000)
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    days = seconds // 86400
    if days == 1:
        return "yesterday"
    if days < 7:
        return f"{days} days ago"
    then, today = time.gmtime(updated / 1000), time.gmtime(now / 1000)
    return time.strftime("%d %b" if then.tm_year == today.tm_year else "%d %b %Y", then).lstrip("0")


def label(record: dict, now: int | None = None) -> str:
    return f"{record['title']} · {last_used(record['updated'], now)}"


def matches(record: dict, query: str) -> bool:
    """Every word of the query, in any case, somewhere in the title or the messages."""
    words = query.casefold().split()
    if not words:
        return True
    text = "\n".join([record["title"], *(m["content"] for m in record.get("messages", []))]).casefold()
    return all(word in text for word in words)


def listing(records: list[dict], query: str = "", now: int | None = None) -> list[tuple[str, str]]:
    """(label, id) of the conversations to list: the ones matching the search, newest first.
    Records without messages (the browser sends only titles when there is no search) match
    on their title."""
    return [(label(r, now), r["id"]) for r in ordered(records) if matches(r, query or "")]


# --- files -------------------------------------------------------------------------------
def file_text(records: list[dict], now: int | None = None, presets: list[chat_presets.ChatPreset] = ()) -> str:
    """The file of all conversations, newest first, with the visitor's own chat presets."""
    # "exported" (when the file was written) is the format's key, kept for the files already out there
    document = {"format": FORMAT, "version": VERSION, "exported": now_ms() if now is None else now,
                "conversations": ordered(records), "presets": [p.record() for p in presets]}
    return json.dumps(document, ensure_ascii=False, indent=1)


def from_chat(messages: Any, now: int | None = None) -> dict:
    """A new conversation from a single chat's download (a list of {role, content})."""
    try:
        chat = prompts.normalize(messages)
    except prompts.PromptError as exc:
        raise ConversationError(f"That file is not a chat saved by phi3ui: {exc}") from None
    if not chat:
        raise ConversationError("That chat has no messages.")
    now = now_ms() if now is None else now
    return clean({"id": new_id(), "messages": chat, "created": now, "updated": now}, now)


def read_file(text: str, now: int | None = None) -> tuple[list[dict], bool]:
    """The conversations in a file phi3ui wrote, and whether it was the file of all
    conversations (else a single chat). A ConversationError says what is wrong with it."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConversationError(f"That file is not a chat saved by phi3ui: {exc}") from None
    if isinstance(data, list):
        return [from_chat(data, now)], False
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConversationError("That file is neither a chat nor the conversations saved by phi3ui.")
    if not isinstance(data.get("version"), int) or data["version"] > VERSION:
        raise ConversationError(f"That file was written by a newer phi3ui (version {data.get('version')!r}); "
                                f"this one reads version {VERSION}.")
    items = data.get("conversations")
    if not isinstance(items, list):
        raise ConversationError("That file has no list of conversations.")
    records = []
    for i, item in enumerate(items, 1):
        try:
            records.append(clean(item, now))
        except ConversationError as exc:
            raise ConversationError(f"Conversation {i} in that file: {exc}") from None
    return records, True


def file_presets(text: str) -> list[chat_presets.ChatPreset]:
    """The chat presets a file of all conversations carries (read_file has read it): none in
    a single chat's file or in one written before presets. A ConversationError says what is
    wrong with one."""
    data = json.loads(text)
    items = data.get("presets", []) if isinstance(data, dict) else []
    if not isinstance(items, list):
        raise ConversationError("That file's chat presets must be a list.")
    presets = []
    for i, item in enumerate(items, 1):
        try:
            presets.append(chat_presets.clean(item))
        except chat_presets.PresetError as exc:
            raise ConversationError(f"Chat preset {i} in that file: {exc}") from None
    return presets


@dataclass
class Merge:
    """What loading a file adds to the conversations kept: records to write (each with the
    rev the stored one had when this was worked out, None when there was none), and counts."""

    write: list[tuple[dict, str | None]] = field(default_factory=list)
    added: int = 0
    updated: int = 0
    already: int = 0
    # The id each loaded conversation has in storage now (its own, or the one it duplicates).
    ids: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.added} added" if self.added else "", f"{self.updated} updated" if self.updated else "",
                 f"{self.already} already here" if self.already else ""]
        return ", ".join(p for p in parts if p) or "nothing to load"


def merge(existing: list[dict], incoming: list[dict]) -> Merge:
    """Fold loaded conversations into the kept ones without duplicates: one with a kept id
    replaces it only if it was updated later and differs; one with new id but the messages
    of a kept one (the same chat loaded twice, or downloaded from another browser) is left
    out; the rest are added. Every record written gets a new rev, so open tabs notice."""
    by_id = {r["id"]: r for r in existing}
    prints = {fingerprint(r["messages"]): r["id"] for r in existing if r["messages"]}
    plan = Merge()
    for record in incoming:
        mine = by_id.get(record["id"])
        twin = prints.get(fingerprint(record["messages"])) if record["messages"] else None
        if mine is not None:
            newer = record["updated"] > mine["updated"]
            differs = (mine["messages"], mine["title"], mine["settings"], mine["preset"]) != (
                record["messages"], record["title"], record["settings"], record["preset"])
            if not (newer and differs):
                plan.already += 1
                plan.ids.append(mine["id"])
                continue
            plan.write.append(({**record, "rev": new_rev()}, mine["rev"]))
            plan.updated += 1
        elif twin is not None or not record["messages"]:
            plan.already += 1
            if twin is not None:
                plan.ids.append(twin)
            continue
        else:
            plan.write.append(({**record, "rev": new_rev()}, None))
            plan.added += 1
        by_id[record["id"]] = record
        prints[fingerprint(record["messages"])] = record["id"]
        plan.ids.append(record["id"])
    return plan
