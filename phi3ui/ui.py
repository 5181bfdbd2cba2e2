"""The Gradio page: chat in the middle; conversations, export and generation settings in the
sidebar.

Components are declared first and every event is wired in `_wire`, in one place. The page
only calls `ChatBackend`; all model work happens there.

Conversations are kept in the browser (phi3ui/conversations.py has the rules). Gradio's own
`BrowserState` keeps one value under one key: every save rewrites all conversations (two tabs
would overwrite each other's), a full storage fails with nothing but a console message, and
other tabs are never told. So the page reads and writes localStorage itself, one entry per
conversation, in the `js=` step of its events (the `phi3ui` object of STORAGE_JS), and
every decision about what to write is made in Python by conversations.py.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import gradio as gr

from . import conversations, downloads, window
from . import prompt as prompts
from .chat import ChatBackend
from .display import (
    STOPPED,
    chat_messages,
    from_display,
    note,
    shown,
    stats_title,
    stored_chat,
    to_display,
)
from .engines import available_devices
from .errors import Problem, report
from .export import ExportError, default_settings
from .fairness import LimitReached
from .json_answers import JSON_OBJECT
from .pump import pump
from .service import Caller, ChatService
from .sessions import Sessions
from .settings import (
    BUNDLED_EXPORT,
    ENGINES,
    LOCAL_ENGINES,
    PRESETS,
    WEIGHT_FORMATS,
    ExportSettings,
    GenerationSettings,
    RuntimeSettings,
    SettingsError,
    cache_root,
    export_preset,
)
from .structured import STRUCTURE_MARK

log = logging.getLogger(__name__)

STREAM_INTERVAL_S = 0.05  # one update of a streamed answer per 50 ms at most (page and /chat)
EXAMPLES = [
    "Explain what int4 weight compression does to a language model, in three sentences.",
    "Write a Python function that checks whether a string is a palindrome.",
    "What is the capital of France?",
    "把“早上好”翻译成英语和日语。",
]
USER_ERRORS = (SettingsError, prompts.PromptError, ExportError)
# What a visitor of a locked server reads when the model fails: the exception's own text
# can name server paths or internals, so it goes to the log only.
LEFT_MID_ANSWER = "You left this conversation while its answer was on its way."
STORAGE_FULL = ("⚠️ **Browser storage is full**: the latest change to “{title}” is not saved (what was saved "
                "before is kept, and the chat stays on screen). Delete or export old conversations, then go on.")
STORAGE_OFF = ("⚠️ **This browser keeps no storage for this page** (private window, or storage blocked): "
               "conversations last until the page is closed.")
COPIED = ("“{title}” was changed in another tab at the same time; this tab's version is kept as "
          "“{copy}”, beside the other.")

# The browser side of keeping conversations: one localStorage entry per conversation. `run`
# does one event's storage work and says what happened; ui.py and conversations.py decide.
STORAGE_JS = """
window.phi3ui = window.phi3ui || (() => {
  const PREFIX = "%(prefix)s", OPEN = "phi3ui:open";
  const known = {};  // id -> the rev this tab last showed or wrote: the two-tabs check
  const parse = (text) => { try { return JSON.parse(text); } catch (e) { return null; } };
  const get = (id) => (id ? parse(localStorage.getItem(PREFIX + id)) : null);
  const quota = (e) => !!e && (e.name === "QuotaExceededError" || e.name === "NS_ERROR_DOM_QUOTA_REACHED"
                               || e.code === 22 || e.code === 1014);
  function all(full) {
    const out = [];
    for (let i = 0; i < localStorage.length; i++) {
      const key = localStorage.key(i);
      if (!key || !key.startsWith(PREFIX)) continue;
      const r = parse(localStorage.getItem(key));
      if (!r || typeof r !== "object") continue;
      out.push(full ? r : {id: r.id, title: r.title, renamed: r.renamed, created: r.created,
                           updated: r.updated, rev: r.rev});
    }
    return out;
  }
  function write(items, out) {
    for (const item of items || []) {
      let rec = item.record;
      const stored = get(rec.id);
      const expect = "expect" in item ? item.expect : known[rec.id];
      if (stored && expect !== undefined && stored.rev !== expect) {  // another tab wrote it
        if (!item.copy) { out.skipped.push(rec.id); continue; }
        out.copied.push([rec.id, item.copy.id, item.copy.title]);
        rec = Object.assign({}, rec, item.copy);
      }
      try {
        localStorage.setItem(PREFIX + rec.id, JSON.stringify(rec));
      } catch (e) {
        out.failed = quota(e) ? "full" : "unavailable";
        out.error = String(e);
        out.copied = out.copied.filter((c) => c[1] !== rec.id);
        return;
      }
      known[rec.id] = rec.rev;
      out.saved.push(rec.id);
    }
  }
  const idle = () => { const stop = document.querySelector("#stop"); return !stop || stop.offsetParent === null; };
  // One event's storage work, in this order: write, remove, peek at or open one, list them all.
  function run(job) {
    job = job || {};
    const out = {saved: [], skipped: [], copied: [], failed: null, removed: null, open: null, peek: null,
                 changed: null, conversations: []};
    try {
      write(job.write, out);
      if (job.remove && !out.failed) {
        out.removed = get(job.remove);
        localStorage.removeItem(PREFIX + job.remove);
        delete known[job.remove];
      }
      if (job.peek) out.peek = get(job.peek);
      if (job.open && !out.failed) {
        out.open = get(job.open);
        if (out.open) known[out.open.id] = out.open.rev;
      }
      if (job.watch && known[job.watch] !== undefined && idle()) {
        const r = get(job.watch);
        if (r && r.rev !== known[job.watch]) { out.changed = r; known[r.id] = r.rev; }
      }
      if (job.list !== false) out.conversations = all(!!job.full);
    } catch (e) {
      out.failed = out.failed || "unavailable";
      out.error = String(e);
    }
    return out;
  }
  function remember(meta) {
    if (!meta || !meta.id) return;
    try { sessionStorage.setItem(OPEN, meta.id); localStorage.setItem(OPEN, meta.id); } catch (e) {}
  }
  function preferred() {
    try { return sessionStorage.getItem(OPEN) || localStorage.getItem(OPEN); } catch (e) { return null; }
  }
  function download(text, name) {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([text], {type: "application/json"}));
    a.download = name;
    document.body.appendChild(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }
  // Another tab wrote a conversation: this one's list (and its chat, if idle) follows.
  let timer = null;
  window.addEventListener("storage", (e) => {
    if (e.storageArea !== localStorage || (e.key !== null && !e.key.startsWith(PREFIX))) return;
    clearTimeout(timer);
    timer = setTimeout(() => { const sync = document.querySelector("#conv-sync"); if (sync) sync.click(); }, 150);
  });
  return {run, busy: () => !idle(), remember, preferred, download};
})();
""" % {"prefix": conversations.STORAGE_PREFIX}
CSS = """
#phi3ui-assets, #conv-sync { display: none !important; }
#conv-list { max-height: 42vh; overflow-y: auto; background: none; }
#conv-list .wrap { display: flex; flex-direction: column; gap: 2px; }
#conv-list label { width: 100%; box-sizing: border-box; margin: 0; padding: 6px 10px; border-radius: var(--radius-md);
                   background: transparent; border: 1px solid transparent; box-shadow: none; cursor: pointer; }
#conv-list label:hover { background: var(--background-fill-secondary); }
#conv-list label.selected { background: var(--color-accent-soft); border-color: var(--color-accent); }
#conv-list label input { position: absolute; opacity: 0; width: 1px; height: 1px; }
#conv-list label span { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; display: block;
                        color: var(--body-text-color); margin-left: 0; }
/* A long line with no space (a pasted 2 MB one) wraps letter by letter, and with the font's
   kerning Chromium lays it out in minutes with the page frozen; without, in a second. */
#chat, textarea { font-kerning: none; }
@media (max-width: 640px) {
  #page-title h2 { font-size: 1.15rem !important; margin: 0 0 0 2rem !important; }
  #chat { height: 60vh !important; }
  #send, #stop, #clear { min-width: 58px !important; flex-grow: 0 !important; padding: 0 10px; font-size: 0.9rem; }
}
"""
STORAGE_HEAD = f"<style>{CSS}</style>\n<script>{STORAGE_JS}</script>"
# After moving to a conversation: this tab (and a new tab) opens it next time.
REMEMBER = "(current) => { window.phi3ui.remember(current); }"
# On a phone-sized screen the sidebar starts closed, and closes when a conversation is chosen.
CLOSE_ON_PHONE = """() => (window.innerWidth < 768 ? {__type__: "update", open: false} : {__type__: "update"})"""
DOWNLOAD_ALL = "(text) => { if (text) window.phi3ui.download(text, 'phi3ui-conversations.json'); }"


def _js(inputs: int, *first: str) -> str:
    """A `js=` step over an event's inputs (a0, a1, …; `p` is the page's `phi3ui` object): the
    first inputs become the given expressions (the storage's answer first), the rest pass."""
    names = [f"a{i}" for i in range(inputs)]
    values = ", ".join([*first, *names[len(first):]])
    return f"({', '.join(names)}) => {{ const p = window.phi3ui; return [{values}]; }}"


EMPTY_STATE = (
    "### 💬 Ask anything\n\n"
    "Everything runs on this machine; nothing leaves it. Pick an example or type below."
)


def browser_secret() -> str:
    """The key the single chat earlier versions kept in the browser (`gr.BrowserState`) is
    encrypted with, kept on disk so that chat can still be read and moved into the
    conversations after a server restart (Gradio's default is a new key per process)."""
    path = cache_root() / "browser-state-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24))
    return path.read_text().strip()


@dataclass
class Page:
    """Builds the page around one backend."""

    backend: ChatBackend
    lock_settings: bool = False
    # Each browser session's answer in flight, early Stops, and which chat is on screen.
    sessions: Sessions = field(default_factory=Sessions)
    trust_proxy: bool = False  # the client is the first X-Forwarded-For entry (fairness.client_address)
    # The one way in for answers, with the fair-use limits, shared with /v1; a default one
    # (no per-client limits) when not given.
    service: ChatService | None = None
    # Budget lines being worked out now. They run outside the queue (on every keystroke), so
    # raw HTTP calls could otherwise ask for any number at once.
    _budget_slots: threading.BoundedSemaphore = field(default_factory=lambda: threading.BoundedSemaphore(4))
    # What `refresh` fills after every change to the chat, in its output order.
    SHOWN: ClassVar[tuple[str, ...]] = ("dl_json", "dl_md", "budget_md", "inspector")

    def __post_init__(self) -> None:
        if self.service is None:
            self.service = ChatService(self.backend)

    # --- helpers -----------------------------------------------------------------------
    @staticmethod
    def settings(max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed, system_prompt,
                 answer_json=False, json_schema="") -> GenerationSettings:
        """The sidebar's values (in `conversations.SETTINGS` order) as settings; answers as
        JSON with an empty schema box fit any JSON object."""
        return GenerationSettings.from_values(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
            repetition_penalty=repetition_penalty, seed=None if seed in (None, "", -1) else seed,
            system_prompt=system_prompt or "",
            json_schema=((json_schema or "").strip() or JSON_OBJECT) if answer_json else "",
        )

    def model_info(self) -> str:
        loaded = self.backend.loaded
        if loaded is None:
            return "No model loaded."
        notices = "".join(f"\n\n> ⚠️ {n}" for n in loaded.notices)
        # Visitors of a locked server get no server paths: the model's name, not its folder.
        return f"Loaded: {loaded.describe(folder=not self.lock_settings)}{notices}"

    def problem(self, exc: BaseException, door: str = "page") -> Problem:
        """How a refusal or failure reads to this page's visitors (errors.problem): a
        locked server's visitors get no exception text; a failure's details go to the log."""
        return report(exc, self.lock_settings, door)

    def caller(self, door: str, request: gr.Request | None) -> Caller:
        return Caller.of(door, request, self.trust_proxy)

    def preview(self, display: list, message: str, settings: GenerationSettings) -> prompts.Fitted:
        """The prompt for the chat plus the box's text. An empty box still shows the
        conversation (with an empty next turn) instead of an 'empty message' error."""
        return self.backend.prepare(chat_messages(display), message if message.strip() else "", settings,
                                    draft=True)

    def budget(self, display: list, message: str, *gen) -> tuple:
        """The live token budget line and the prompt inspector's text; left as they are while
        the server is already working out as many as it allows."""
        if not self._budget_slots.acquire(blocking=False):
            return gr.skip(), gr.skip()
        try:
            fitted = self.preview(display or [], message or "", self.settings(*gen))
        except USER_ERRORS as exc:
            return f"⚠️ {exc}", ""
        finally:
            self._budget_slots.release()
        dropped = (f" · ✂️ the model no longer sees the {fitted.dropped_exchanges} oldest exchange(s) "
                   f"(above the ✂️ mark; it reads from exchange {fitted.dropped_exchanges + 1} on)"
                   if fitted.dropped_exchanges else "")
        line = (f"**Context** {fitted.used_tokens:,} of {fitted.window:,} tokens "
                f"({fitted.prompt_tokens:,} prompt + {fitted.max_new_tokens:,} for the answer){dropped}")
        sent = fitted.prompt.shown().replace("\n", "⏎\n")
        return line, (f"{fitted.prompt_tokens} tokens. The chat template's own text is marked "
                      f"{STRUCTURE_MARK.format('…')}; everything else is read as plain text.\n\n{sent}")

    # --- chat events --------------------------------------------------------------------
    @staticmethod
    def busy(generating: bool) -> tuple[dict, dict, dict]:
        """Message box, Send and Stop while an answer streams (Stop only) and after."""
        return gr.update(interactive=not generating), gr.update(visible=not generating), gr.update(visible=generating)

    def submit(self, message: str, display: list, *gen) -> tuple:
        """Check the message before it leaves the box: on error the text stays there."""
        try:
            self.backend.prepare(chat_messages(display), message, self.settings(*gen))
        except USER_ERRORS as exc:
            kept = " Nothing was sent; your text is still in the box." if str(message or "").strip() else ""
            raise gr.Error(f"{exc}{kept}") from None
        box, send, stop = self.busy(True)
        return {**box, "value": ""}, [*display, {"role": "user", "content": shown(message)}], send, stop

    def respond(self, request: gr.Request, display: list, *gen) -> Iterator[list]:
        """Stream the answer to the last user message into the chat, one update per
        STREAM_INTERVAL_S at most, and end with the stats note; a refusal is a note under
        the message. If the page goes away, Gradio closes this generator, and leaving the
        turn stops the engine."""
        session = request.session_hash
        chat = self.sessions.begin_turn(session)
        if not display or display[-1]["role"] != "user":
            return  # nothing to answer
        messages = chat_messages(display)
        try:
            turn = self.service.open(self.caller("page", request), messages[:-1], messages[-1]["content"],
                                     self.settings(*gen))
        except Exception as exc:  # noqa: BLE001 - every refusal is shown under the message
            yield [*display, note("⚠️ Not sent", self.problem(exc).text)]
            return

        def answered() -> list:
            return [{"role": "assistant", "content": shown(turn.text)}] if turn.text else []

        try:
            with turn:
                display = window.mark_cut(display, turn.fitted.dropped_exchanges)  # before what the model still sees
                self.sessions.attach(session, turn.answer)  # a Stop pressed while this waited applies now
                for _ in turn.texts(STREAM_INTERVAL_S, end=False):  # the end comes with its stats
                    if not self.sessions.is_current(session, chat):
                        turn.stop("the chat was replaced")
                        return  # write nothing into the new one
                    yield [*display, *answered()]
        except Exception as exc:  # noqa: BLE001 - shown in the page, not only the log
            yield [*display, *answered(), note("⚠️ The model failed", self.problem(exc).text)]
            return
        finally:
            self.sessions.detach(session, turn.answer)
        if not self.sessions.is_current(session, chat):
            return
        stats = turn.stats
        if stats is not None and stats.stopped and not stats.answer_tokens:
            yield [*display, note(f"{STOPPED} before it started")]
            return
        dropped = turn.fitted.dropped_exchanges
        body = (f"{dropped} oldest exchange(s) were left out of the prompt, to fit the "
                "context window and the server's history limits." if dropped else "")
        yield [*display, *answered(), note(stats_title(stats) if stats else STOPPED, body)]

    def stop(self, request: gr.Request) -> None:
        """End this session's answer within about one token; `respond` then adds the note.
        An answer still waiting in the queue never starts."""
        self.sessions.stop(request.session_hash)

    @staticmethod
    def retry(display: list) -> list:
        """Back to the last user message; `respond` then answers it anew."""
        last_user = max((i for i, m in enumerate(display) if m["role"] == "user"), default=-1)
        return display[: last_user + 1]

    @staticmethod
    def undo(display: list) -> tuple[list, str]:
        """Remove the last exchange and give its message back to the box."""
        last_user = max((i for i, m in enumerate(display) if m["role"] == "user"), default=None)
        if last_user is None:
            return display, ""
        return display[:last_user], from_display(prompts.message_text(display[last_user]["content"]))

    @staticmethod
    def edit(display: list, data: gr.EditData) -> list:
        """Continue from an edited user message: everything after it goes. The box shows
        the escaped text; round-tripping escapes anything typed anew."""
        return [*display[: data.index], {"role": "user", "content": shown(from_display(str(data.value)))}]

    @staticmethod
    def example(data: gr.SelectData) -> str:
        return data.value["text"]

    # --- files ---------------------------------------------------------------------------
    @staticmethod
    def files(display: list, session: str) -> tuple[str | None, str | None]:
        """The chat as files to download; none without a session id (no folder of its own)."""
        if not session:
            return None, None
        return downloads.write_files(chat_messages(display) if display else [], session)

    # --- conversations ---------------------------------------------------------------------
    # Each event that touches the kept conversations has a `js=` step: the browser does what
    # the last Python step asked (`pending`) and replaces the `storage` input with what its
    # storage says (`phi3ui.run`, STORAGE_JS); the Python step reads that and decides.
    @property
    def prompt_locked(self) -> bool:
        """The host's system prompt is in force and the box is read-only."""
        host = getattr(self.backend, "host_prompt", None)
        return bool(host and host.locked and host.text)

    def setting_values(self, *gen) -> dict:
        """The sidebar's settings as a conversation keeps them; a locked system prompt is the
        host's, not the conversation's."""
        values = dict(zip(conversations.SETTINGS, gen))
        if self.prompt_locked:
            values["system_prompt"] = ""
        return values

    def setting_updates(self, settings: dict) -> list:
        """A conversation's settings for the sidebar, held to the sliders' ranges; a setting it
        does not have (or a locked system prompt) is left as the sidebar has it."""
        ranges = {"max_new_tokens": (1, self.backend.limits.max_new_tokens), "temperature": (0.0, 2.0),
                  "top_p": (0.05, 1.0), "top_k": (0, 200), "repetition_penalty": (0.5, 2.0)}
        values = []
        for name in conversations.SETTINGS:
            value = settings.get(name)
            if name not in settings or (name == "system_prompt" and self.prompt_locked):
                values.append(gr.skip())
            elif name in ranges:
                low, high = ranges[name]
                values.append(min(max(value, low), high))
            elif name == "seed":
                values.append(value if isinstance(value, int) and 0 <= value < 2**32 else -1)
            else:
                values.append(value)
        return values

    @staticmethod
    def record_or_none(value: Any) -> dict | None:
        try:
            return conversations.clean(value) if value else None
        except conversations.ConversationError:
            return None

    def screen(self, record: dict | None) -> dict:
        """What shows a conversation: its messages, title and settings. A new chat (None) gets
        a new id and keeps the sidebar's settings."""
        if record is None:
            return {self.chatbot: [], self.current: conversations.new_meta(), self.conv_title: ""}
        return {self.chatbot: conversations.display_messages(record["messages"]),
                self.current: conversations.meta_of(record), self.conv_title: record["title"],
                **dict(zip(self.gen, self.setting_updates(record["settings"])))}

    def listing(self, stored: dict, query: str, current_id: str | None) -> gr.Radio:
        choices = conversations.listing(conversations.readable(stored.get("conversations")), query or "")
        return gr.Radio(choices=choices, value=current_id if current_id in {c[1] for c in choices} else None)

    @staticmethod
    def storage_problem(stored: dict, title: str) -> str:
        """The note under the chat when the browser could not save: full, or no storage at all."""
        if stored.get("failed") == "full":
            return STORAGE_FULL.format(title=to_display(title))
        return STORAGE_OFF if stored.get("failed") else ""

    @staticmethod
    def save_item(record: dict) -> dict:
        """A record to write, with the copy it becomes if another tab changed it meanwhile."""
        return {"record": record, "copy": conversations.conflict_copy(record)}

    def keep(self, stored: dict, display: list, current: dict | None, *gen, streaming: bool = False) -> list:
        """The chat on screen as a write for the browser; none when there is nothing new."""
        if not current:
            return []
        kept = conversations.stopped(display or [], streaming, LEFT_MID_ANSWER)
        record = conversations.build(current, kept, self.setting_values(*gen), self.record_or_none(stored.get("peek")))
        return [self.save_item(record)] if record else []

    def leave_chat(self, request: gr.Request, stored: dict, streaming: bool, display: list,
                   current: dict | None, *gen) -> list:
        """The page moves to another conversation: this one's answer stops and writes nothing
        more, and the chat so far is kept (with a note if its answer was cut short)."""
        self.replace_chat(request)
        return self.keep(stored, display, current, *gen, streaming=bool(streaming))

    def switch(self, request: gr.Request, data: gr.SelectData, stored: dict, streaming: bool, display: list,
               current: dict | None, *gen) -> dict:
        return {"write": self.leave_chat(request, stored, streaming, display, current, *gen), "open": data.value}

    def start_new(self, request: gr.Request, stored: dict, streaming: bool, display: list, current: dict | None,
                  *gen) -> dict:
        return {"write": self.leave_chat(request, stored, streaming, display, current, *gen), "new": True}

    def delete(self, request: gr.Request, stored: dict, streaming: bool, display: list, current: dict | None,
               *gen) -> dict:
        """Remove the conversation on screen from the browser and show a new chat; the page
        offers it back (Restore) until the next delete."""
        self.replace_chat(request)
        if not current:
            return {"new": True}
        unsaved = conversations.build(current, display or [], self.setting_values(*gen), None)
        return {"remove": current["id"], "new": True, "trash": unsaved}

    def restore_deleted(self, request: gr.Request, stored: dict, streaming: bool, display: list,
                        current: dict | None, trash: Any, *gen) -> dict:
        record = self.record_or_none(trash)
        if record is None:
            return {"error": "There is no deleted conversation to restore."}
        back = {"record": {**record, "rev": conversations.new_rev()}, "expect": None}
        return {"write": [*self.leave_chat(request, stored, streaming, display, current, *gen), back],
                "open": record["id"], "restored": True}

    def load_file(self, request: gr.Request, stored: dict, streaming: bool, display: list, current: dict | None,
                  file: Any, *gen) -> dict:
        """A file of all conversations merges into the kept ones (conversations.merge) and the
        chat on screen stays; a single chat's JSON becomes a conversation and is shown."""
        path = getattr(file, "path", None) or (file.get("path") if isinstance(file, dict) else file)
        try:
            records, everything = conversations.read_file(Path(str(path)).read_text())
        except (conversations.ConversationError, UnicodeDecodeError, OSError) as exc:
            return {"error": str(exc)}
        plan = conversations.merge(conversations.readable(stored.get("conversations")), records)
        writes = [{"record": record, "expect": rev} for record, rev in plan.write]
        if not everything:
            return {"write": [*self.leave_chat(request, stored, streaming, display, current, *gen), *writes],
                    "open": plan.ids[0]}
        note = f"Loaded {len(records)} conversation(s): {plan.summary()}."
        mine = current and current["id"] in {record["id"] for record, _ in plan.write}
        # the conversation on screen came in newer: show it, unless its answer is on its way
        return {"write": writes, "note": note, **({"open": current["id"]} if mine and not streaming else
                                                  {"stay": True})}

    def arrive(self, request: gr.Request, stored: dict, pending: dict | None, current: dict | None,
               query: str) -> dict:
        """After the browser did what `pending` asked: show the conversation it opened (or a
        new chat). If it could not keep the chat being left, the page stays on it."""
        pending = pending or {}
        current = current or {}
        problem = self.storage_problem(stored, current.get("title") or conversations.NEW_TITLE)
        if pending.get("error"):  # an event's own errors would not show: a note says it
            problem = f"⚠️ {to_display(pending['error'])}"
        if pending.get("stay") or pending.get("error") or (stored.get("failed") == "full" and pending.get("write")):
            return {self.conv_list: self.listing(stored, query, current.get("id")),
                    self.storage_note: problem or pending.get("note", "")}
        self.sessions.settle(request.session_hash)
        record = self.record_or_none(stored.get("open"))
        shown = self.screen(record)
        notes = [problem, pending.get("note", "")]
        if pending.get("open") and record is None:
            notes.append("That conversation is no longer kept here (deleted in another tab?): this is a new chat.")
        shown.update({self.conv_list: self.listing(stored, query, shown[self.current]["id"]),
                      self.storage_note: " ".join(n for n in notes if n), self.to_save: None})
        if "remove" in pending:
            gone = self.record_or_none(stored.get("removed")) or self.record_or_none(pending.get("trash"))
            shown[self.trash] = gone
            shown[self.restore_btn] = gr.update(value=f"Restore “{gone['title']}”" if gone else "Restore",
                                                visible=gone is not None)
        elif pending.get("restored"):
            shown.update({self.trash: None, self.restore_btn: gr.update(visible=False)})
        return {**shown, **dict(zip([self.message, self.send, self.stop_btn], self.busy(False)))}

    def open_page(self, request: gr.Request, stored: dict, display: list, query: str) -> dict:
        """The page opens with the conversation this tab (or, in a new tab, the browser) had on
        screen last, or a new chat."""
        record = self.record_or_none(stored.get("open"))
        shown = self.screen(record)
        if record is None:
            del shown[self.chatbot]  # a chat restored from an earlier version's storage stays
            shown[self.to_save] = display or None
        return {**shown, self.conv_list: self.listing(stored, query, shown[self.current]["id"]),
                self.storage_note: self.storage_problem(stored, conversations.NEW_TITLE)}

    def record(self, request: gr.Request, stored: dict, to_save: Any, display: list, current: dict | None,
               *gen) -> dict:
        """After a change to the chat (`settle` put it in `to_save`): the write that keeps it.
        It is built from the chat and the conversation on screen as they are now, read in the
        same step, so it always goes to the conversation it belongs to."""
        if to_save is None or not current:
            return {self.pending: None}
        return {**self.record_now(request, stored, display, current, *gen), self.to_save: None}

    def record_now(self, request: gr.Request, stored: dict, display: list, current: dict | None, *gen) -> dict:
        """The write for the conversation on screen as it is (after a setting or the title
        changed); none when nothing differs from what is kept."""
        writes = self.keep(stored, display, current, *gen)
        return {self.pending: {"write": writes, "chat": self.sessions.chat_number(request.session_hash)}
                if writes else None}

    def saved(self, request: gr.Request, stored: dict, pending: dict | None, current: dict | None,
              query: str) -> dict:
        """After the browser wrote: the list, a note if it could not, and the title (the first
        message names a conversation; another tab's change makes this one a copy)."""
        current = current or {}
        result = {self.conv_list: self.listing(stored, query, current.get("id")),
                  self.storage_note: self.storage_problem(stored, current.get("title") or conversations.NEW_TITLE)}
        written = [w["record"] for w in (pending or {}).get("write", []) if w["record"]["id"] == current.get("id")]
        if not written or not self.sessions.is_current(request.session_hash, pending.get("chat", -1)):
            return result
        record = written[-1]
        copied = [c for c in stored.get("copied", []) if c[0] == record["id"]]
        if copied:
            _, copy_id, copy_title = copied[-1]
            meta = {"id": copy_id, "title": copy_title, "renamed": True}
            result[self.storage_note] = COPIED.format(title=to_display(record["title"]), copy=to_display(copy_title))
            result[self.conv_list] = self.listing(stored, query, copy_id)
        elif record["title"] != current.get("title"):
            meta = conversations.meta_of(record)
        else:
            return result
        return {**result, self.current: meta, self.conv_title: meta["title"]}

    @staticmethod
    def rename(title: str, current: dict | None) -> Any:
        """A title typed by hand; an empty one gives the automatic title back."""
        if not current:
            return gr.skip()
        title = " ".join(str(title or "").split())[: conversations.MAX_TITLE_CHARS]
        return {**current, "title": title, "renamed": bool(title)}

    def relist(self, stored: dict, query: str, current: dict | None) -> gr.Radio:
        return self.listing(stored, query, (current or {}).get("id"))

    def synced(self, request: gr.Request, stored: dict, query: str, current: dict | None) -> dict:
        """Another tab changed the kept conversations: the list follows, and so does the chat
        on screen if it was changed there and this tab is idle (the browser checks both)."""
        result = {self.conv_list: self.relist(stored, query, current)}
        changed = self.record_or_none(stored.get("changed"))
        if changed and current and changed["id"] == current.get("id"):
            result.update(self.screen(changed))
        return result

    @staticmethod
    def export(stored: dict, _previous: str = "") -> tuple[str, str]:
        """The file of all conversations, for the browser to download; or a note why not."""
        records = conversations.readable(stored.get("conversations"))
        if stored.get("failed"):
            return "", STORAGE_OFF
        if not records:
            return "", "There are no conversations to export yet."
        return conversations.export_text(records), ""

    def migrate(self, request: gr.Request, stored: Any, display: list) -> tuple:
        """The chat an earlier version kept (one, in `store`) fills an empty new page and is
        then kept as a conversation."""
        chat = self.restore(request, stored, display)
        return (chat, chat) if isinstance(chat, list) and chat else (gr.skip(), gr.skip())

    @staticmethod
    def forget_legacy(kept: dict, stored: Any) -> Any:
        """Empty the earlier version's store once its chat is among the conversations."""
        chat = stored_chat(stored)
        if not chat:
            return gr.skip()
        prints = {conversations.fingerprint(r["messages"]) for r in conversations.readable(kept.get("conversations"))}
        return [] if conversations.fingerprint(conversations.record_messages(chat)) in prints else gr.skip()

    # --- model ---------------------------------------------------------------------------
    def export_and_load(self, model, weight_format, group_size, ratio, sym, all_layers, device,
                        engine, prompt_lookup) -> Iterator[tuple[str, str]]:
        """Export (if not cached) and load, streaming the exporter's progress."""
        if self.lock_settings:
            raise gr.Error("Model settings are locked on this server.")
        try:
            settings = ExportSettings(weight_format=weight_format, group_size=int(group_size),
                                      ratio=float(ratio), sym=bool(sym), all_layers=bool(all_layers)).validate()
            runtime = RuntimeSettings(engine=engine, device=device, prompt_lookup=bool(prompt_lookup)).validate()
        except (SettingsError, TypeError, ValueError) as exc:
            raise gr.Error(str(exc)) from None
        log_lines: list[str] = []
        try:
            for line in pump(lambda emit: self.backend.load(model.strip(), settings, runtime, progress=emit),
                             name="export-and-load"):
                log_lines.append(line)
                yield "\n".join(log_lines[-40:]), self.model_info()
        except Exception as exc:  # noqa: BLE001 - shown in the page
            log_lines.append(f"❌ {exc}")
            yield "\n".join(log_lines[-40:]), self.model_info()
            raise gr.Error(str(exc)) from None
        yield "\n".join(log_lines[-40:]), self.model_info()

    @staticmethod
    def defaults_for(model: str, preset: str | None = None) -> int:
        """The group size for a newly typed model: its preset's, else its seed default."""
        return (export_preset(preset, model) if preset else default_settings(model.strip())).group_size

    @staticmethod
    def preset_of(settings: ExportSettings, model: str) -> str | None:
        """Which preset these settings are, if any (the radio shows none for custom ones)."""
        return next((p for p in PRESETS if export_preset(p, model) == settings), None)

    @staticmethod
    def apply_preset(preset: str | None, model: str) -> tuple:
        """A preset's export settings, for the fields below the preset radio."""
        if not preset:
            return (gr.skip(),) * 5
        chosen = export_preset(preset, model or "")
        return chosen.weight_format, chosen.group_size, chosen.ratio, chosen.sym, chosen.all_layers

    # --- API -----------------------------------------------------------------------------
    def api_chat(self, message: str, history: list[dict] | None = None, max_new_tokens: int = 1024,
                 temperature: float = 0.0, top_p: float = 1.0, top_k: int = 50,
                 repetition_penalty: float = 1.0, seed: int | None = None,
                 system_prompt: str = "", json_schema: str = "",
                 request: gr.Request | None = None) -> Iterator[str]:
        """Stream the answer to `message` after `history` ({role, content} messages), the
        text so far with each update; with a `json_schema`, the answer is JSON that fits it.
        A refusal or failure is a `gr.Error` with its text."""
        try:
            settings = self.settings(max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed,
                                     system_prompt, bool(json_schema), json_schema)
            with self.service.open(self.caller("/chat", request), history or [], message, settings) as turn:
                yield from turn.texts(STREAM_INTERVAL_S)
        except Exception as exc:  # noqa: BLE001 - the client gets the text errors.problem allows
            raise gr.Error(self.problem(exc, "/chat").text) from None

    def api_door(self, request: gr.Request, *values: Any) -> tuple:
        """/chat's check before the call is queued: a client that already has an answer
        (or its rate) used up is refused at once. `api_chat` still takes the ticket: a burst
        that arrives all at once passes this check together and is refused there."""
        caller = self.caller("/chat", request)
        try:
            self.service.gate.check(caller.client, caller.session)
        except LimitReached as exc:
            self.service.refused(caller.door, exc.limit, f"before the queue; retry in {exc.retry_after_s} s")
            raise gr.Error(str(exc)) from None
        return tuple(gr.validate(True, "") for _ in values)

    def system_prompt_box(self) -> gr.Textbox:
        """Editable, with the host's prompt as its default; read-only when the host locked it,
        and empty (the server fills it in) when the host keeps it private."""
        host = self.backend.host_prompt
        if not (host.locked and host.text):
            return gr.Textbox(label="System prompt", lines=3, value=host.text, elem_id="system-prompt")
        return gr.Textbox(label="System prompt (set by the host)", lines=3, interactive=False,
                          value=host.text if host.shown else "", elem_id="system-prompt",
                          placeholder="The host's system prompt is in force.",
                          info="This server answers with its own system prompt; it cannot be changed here.")

    # --- layout --------------------------------------------------------------------------
    def build(self) -> gr.Blocks:
        gen_defaults = GenerationSettings()
        loaded = self.backend.loaded
        export_defaults = (loaded.exported.settings if loaded and loaded.exported.settings else BUNDLED_EXPORT
                           if loaded and loaded.exported.source == "bundled" else ExportSettings())
        # delete_cache: Gradio's copies of download files go after a day, checked hourly.
        with gr.Blocks(title="phi3ui · local Phi-3 chat", delete_cache=(3600, 86400),
                       analytics_enabled=False) as demo:
            with gr.Sidebar(label="Conversations and settings", open=True, width=340,
                            elem_id="sidebar") as self.sidebar:
                gr.HTML("", head=STORAGE_HEAD, elem_id="phi3ui-assets", container=False, padding=False,
                        js_on_load=None)
                gr.Markdown("### Conversations")
                self.new_chat = gr.Button("+ New chat", size="sm", elem_id="new-chat")
                self.search = gr.Textbox(placeholder="Search conversations", show_label=False, lines=1,
                                         max_lines=1, container=False, elem_id="conv-search")
                self.conv_list = gr.Radio([], show_label=False, container=False, interactive=True,
                                          elem_id="conv-list")
                self.conv_title = gr.Textbox(label="Title (Enter renames it)", max_lines=1,
                                             placeholder=conversations.NEW_TITLE, elem_id="conv-title")
                with gr.Row():
                    self.delete_btn = gr.Button("Delete", size="sm", variant="stop", min_width=60,
                                                elem_id="conv-delete")
                    self.export_all = gr.Button("Export all", size="sm", min_width=60, elem_id="export-all")
                    self.import_all = gr.UploadButton("Import", file_types=[".json"], size="sm", min_width=60,
                                                      elem_id="import-all")
                self.restore_btn = gr.Button("Restore", size="sm", visible=False, elem_id="conv-restore")
                gr.Markdown("### Model")
                self.model_md = gr.Markdown(self.model_info(), elem_id="model-info")
                # A remote engine (--engine openai) has nothing here to export, load or place on a device.
                remote = bool(loaded and loaded.engine.kind.remote)
                with gr.Accordion("Export and load", open=False, visible=not (self.lock_settings or remote)):
                    self.model_box = gr.Textbox(
                        label="Model id or folder", value=loaded.exported.source if loaded else "",
                        info="Hugging Face id, local folder, OpenVINO folder, or 'bundled'")
                    self.preset = gr.Radio(
                        list(PRESETS), label="Preset", elem_id="export-preset",
                        value=self.preset_of(export_defaults, loaded.exported.source if loaded else ""),
                        info="fills the fields below. The faster presets compress more layers to int4 "
                             "and answer less like the full model: see bench/results/quality.md")
                    self.weight_format = gr.Dropdown(list(WEIGHT_FORMATS), value=export_defaults.weight_format,
                                                     label="Weight format", elem_id="export-format")
                    self.group_size = gr.Number(export_defaults.group_size, precision=0, label="Group size",
                                                elem_id="export-group-size",
                                                info="must divide the layer widths; -1 = per channel")
                    self.ratio = gr.Slider(0, 1, export_defaults.ratio, step=0.05, label="Ratio (share in int4)",
                                           elem_id="export-ratio")
                    self.sym = gr.Checkbox(export_defaults.sym, label="Symmetric", elem_id="export-sym")
                    self.all_layers = gr.Checkbox(export_defaults.all_layers, label="All layers in int4",
                                                  info="the embeddings and the output layer too (int4 only)",
                                                  elem_id="export-all-layers")
                    self.device = gr.Dropdown([*available_devices(), "AUTO"], allow_custom_value=True,
                                              value=loaded.engine.device if loaded else "CPU", label="Device")
                    self.engine = gr.Radio(list(LOCAL_ENGINES), value=loaded.engine.name if loaded else "genai",
                                           label="Engine", info=" · ".join(f"{name}: {ENGINES[name].summary}"
                                                                          for name in LOCAL_ENGINES))
                    self.prompt_lookup = gr.Checkbox(loaded.runtime.prompt_lookup if loaded else False,
                                                     label="Prompt lookup", elem_id="prompt-lookup",
                                                     info="genai only: answers that repeat the conversation "
                                                          "(edits, quotes, code) come out several times faster")
                    self.export_btn = gr.Button("Export and load", variant="secondary", elem_id="export-button")
                    self.export_log = gr.Textbox(label="Progress", lines=6, max_lines=12, interactive=False,
                                                 autoscroll=True)
                gr.Markdown("### Generation")
                self.system_prompt = self.system_prompt_box()
                cap = self.backend.limits.max_new_tokens  # --max-new-tokens-cap: visitors are refused above it
                self.max_new_tokens = gr.Slider(1, cap, min(gen_defaults.max_new_tokens, cap),
                                                step=1, label="Max new tokens", elem_id="max-new-tokens")
                self.temperature = gr.Slider(0, 2, gen_defaults.temperature, step=0.05,
                                             label="Temperature (0 = greedy)", elem_id="temperature")
                self.top_p = gr.Slider(0.05, 1, gen_defaults.top_p, step=0.05, label="Top-p")
                self.top_k = gr.Slider(0, 200, gen_defaults.top_k, step=1, label="Top-k (0 = off)")
                self.repetition_penalty = gr.Slider(0.5, 2, gen_defaults.repetition_penalty, step=0.05,
                                                    label="Repetition penalty")
                self.seed = gr.Number(-1, precision=0, label="Seed (-1 = random)", elem_id="seed")
                self.answer_json = gr.Checkbox(False, label="Answer as JSON", elem_id="answer-json",
                                               info="The answer is JSON that fits the schema below "
                                                    "(genai engine or a remote server)")
                self.json_schema = gr.Code("", language="json", label="JSON schema (empty: any JSON object)",
                                           interactive=True, lines=4, elem_id="json-schema")

            gr.Markdown("## phi3ui · chat with Phi-3 on OpenVINO, on your own machine", elem_id="page-title")
            self.chatbot = gr.Chatbot(
                show_label=False, height="62vh", editable="user", elem_id="chat", placeholder=EMPTY_STATE,
                examples=[{"text": e} for e in EXAMPLES], buttons=["copy", "copy_all"],
                allow_tags=False, feedback_options=None,
                # No LaTeX: Gradio cuts $$…$$ out of the raw text before Markdown, across code
                # and prose, which would undo display.to_display's escaping.
                latex_delimiters=[],
            )
            with gr.Row(equal_height=True):
                self.message = gr.Textbox(placeholder="Message (Enter sends, Shift+Enter for a new line)",
                                          show_label=False, lines=1, max_lines=8, scale=8, elem_id="message",
                                          autofocus=True)
                self.send = gr.Button("Send", variant="primary", scale=1, min_width=80, elem_id="send")
                self.stop_btn = gr.Button("Stop", variant="stop", scale=1, min_width=80, elem_id="stop",
                                          visible=False)
                self.clear = gr.Button("New chat", scale=1, min_width=80, elem_id="clear")
            self.storage_note = gr.Markdown(elem_id="conv-note")  # what happened to the kept conversations
            self.budget_md = gr.Markdown(elem_id="budget")
            with gr.Accordion("Prompt inspector: what the model will see", open=False, elem_id="inspector-box"):
                self.inspector = gr.Code(label="Prompt", language=None, interactive=False, elem_id="inspector")
            with gr.Row():
                self.dl_json = gr.DownloadButton("Download JSON", size="sm", elem_id="download-json")
                self.dl_md = gr.DownloadButton("Download Markdown", size="sm", elem_id="download-md")
                self.upload = gr.UploadButton("Load JSON", file_types=[".json"], size="sm", elem_id="load-json")
            # The single chat earlier versions kept; read once and moved into the conversations.
            self.store = gr.BrowserState([], storage_key="phi3ui-chat", secret=browser_secret())
            # The conversation on screen ({id, title, renamed}), the chat `settle` asks to keep, what
            # the storage is to do next (conversations.py decides, the browser does it), the last
            # deleted conversation, and the input whose value the browser replaces with what its
            # storage holds (`phi3ui.run`).
            self.current = gr.JSON(None, visible=False)
            self.to_save = gr.JSON(None, visible=False)
            self.pending = gr.JSON(None, visible=False)
            self.trash = gr.JSON(None, visible=False)
            self.storage = gr.JSON(None, visible=False)
            self.export_text = gr.Textbox(visible=False)
            self.streaming = gr.Checkbox(False, visible=False)  # the browser fills in: is an answer on its way
            self.sync_btn = gr.Button("Sync", visible="hidden", elem_id="conv-sync")
            self.gen = [self.max_new_tokens, self.temperature, self.top_p, self.top_k, self.repetition_penalty,
                        self.seed, self.system_prompt, self.answer_json, self.json_schema]  # conversations.SETTINGS
            self._wire(demo)
        return demo

    def _wire(self, demo: gr.Blocks) -> None:
        """Every event of the page. Only `/chat` is an API endpoint. The page's own events are
        private (not in the API page or gradio_client), but raw HTTP can still reach them, so
        each does the server-side checks itself and its work is bounded by `Limits`."""
        gen = self.gen
        quick = dict(queue=False, api_visibility="private", show_progress="hidden")
        controls = [self.message, self.send, self.stop_btn]
        sent = [self.message, self.chatbot, self.send, self.stop_btn]
        generate = dict(fn=self.respond, inputs=[self.chatbot, *gen], outputs=self.chatbot,
                        concurrency_limit=self.service.places, concurrency_id="generate",
                        api_visibility="private", show_progress="hidden")
        shown = [getattr(self, name) for name in self.SHOWN]
        settle = dict(fn=self.settle, inputs=[self.chatbot, self.message, *gen],
                      outputs=[self.to_save, *shown, *controls], **quick)
        refresh = dict(fn=self.refresh, inputs=[self.chatbot, self.message, *gen], outputs=shown, **quick)
        started = dict(fn=lambda: self.busy(True), inputs=None, outputs=controls, **quick)
        answers = []  # events that stream an answer: moving to another conversation cancels them

        # Keeping the conversation on screen: `record` works out the write, the browser does it
        # (`apply`: the pending writes, removal and opening, then the list).
        def peek(i: int) -> str:  # the stored version of the conversation in input a<i>
            return f"p.run({{peek: a{i} && a{i}.id, list: false}})"

        listed = [self.conv_list, self.current, self.conv_title, self.storage_note]
        apply = dict(inputs=[self.storage, self.pending, self.current, self.search], js=_js(
            4, "p.run({write: a1 && a1.write, remove: a1 && a1.remove, open: a1 && a1.open, "
               "full: !!(a3 && a3.trim())})"), **quick)
        record = dict(fn=self.record, inputs=[self.storage, self.to_save, self.chatbot, self.current, *gen],
                      outputs=[self.pending, self.to_save], js=_js(4 + len(gen), peek(3)), **quick)
        record_now = dict(fn=self.record_now, inputs=[self.storage, self.chatbot, self.current, *gen],
                          outputs=[self.pending], js=_js(3 + len(gen), peek(2)), **quick)
        saved = dict(fn=self.saved, outputs=listed, **apply)

        def kept(event: Any, step: dict = record) -> Any:
            return event.then(**step).then(**saved)

        # Moving to another conversation (or a new one): the one on screen is kept first.
        arrived = [self.chatbot, self.current, self.conv_title, *gen, self.conv_list, self.storage_note,
                   self.to_save, self.trash, self.restore_btn, *controls]
        arrive = dict(fn=self.arrive, outputs=arrived, **apply)
        remember = dict(fn=None, inputs=[self.current], outputs=None, js=REMEMBER, **quick)
        close_on_phone = dict(fn=None, inputs=None, outputs=[self.sidebar], js=CLOSE_ON_PHONE, **quick)
        leaving = [self.storage, self.streaming, self.chatbot, self.current]

        def move(trigger: Any, fn: Any, extra: list | None = None, read: str = "", away: bool = True) -> None:
            """`fn` decides where to go (and what to keep of the chat on screen), the browser
            does it, `arrive` shows the result. `away`: the page may leave the chat on screen
            (its answer is cancelled; on a phone the sidebar closes to show the chat)."""
            inputs = [*leaving, *(extra or []), *gen]
            moved = trigger(fn, inputs, self.pending, js=_js(len(inputs), read or peek(3), "p.busy()"),
                            cancels=answers if away else None, **quick).success(**arrive).then(**remember)
            (moved.then(**close_on_phone) if away else moved).then(**refresh)

        def send(event: Any) -> None:
            answer = event.success(**generate)
            answers.append(answer)
            kept(answer.then(**{**settle, "fn": self.settle_answer}))

        for trigger in (self.message.submit, self.send.click):
            send(trigger(self.submit, [self.message, self.chatbot, *gen], sent, **quick))
        send(self.chatbot.example_select(self.example, None, self.message, **quick).success(
            self.submit, [self.message, self.chatbot, *gen], sent, **quick))
        send(self.chatbot.retry(self.retry, self.chatbot, self.chatbot, **quick).success(**started))
        send(self.chatbot.edit(self.edit, self.chatbot, self.chatbot, **quick).success(**started))
        kept(self.chatbot.undo(self.undo, self.chatbot, [self.chatbot, self.message], **quick).then(**settle))
        self.stop_btn.click(self.stop, None, None, **quick)

        move(self.conv_list.select, self.switch)
        for trigger in (self.new_chat.click, self.clear.click):
            move(trigger, self.start_new)
        for trigger in (self.delete_btn.click, self.chatbot.clear):
            move(trigger, self.delete)
        move(self.restore_btn.click, self.restore_deleted, [self.trash])
        everything = "p.run({peek: a3 && a3.id, full: true})"  # a file merges with all that is kept
        move(self.upload.upload, self.load_file, [self.upload], read=everything)
        move(self.import_all.upload, self.load_file, [self.import_all], read=everything, away=False)
        kept(self.conv_title.submit(self.rename, [self.conv_title, self.current], self.current, **quick),
             record_now)
        self.search.change(self.relist, [self.storage, self.search, self.current], self.conv_list,
                           js=_js(3, "p.run({full: !!(a1 && a1.trim())})"), trigger_mode="always_last", **quick)
        self.sync_btn.click(self.synced, [self.storage, self.search, self.current],
                            [self.conv_list, self.chatbot, self.current, self.conv_title, *gen],
                            js=_js(3, "p.run({full: !!(a1 && a1.trim()), watch: a2 && a2.id})"),
                            trigger_mode="always_last", **quick).then(**refresh)
        self.export_all.click(self.export, [self.storage, self.export_text],
                              [self.export_text, self.storage_note], js=_js(2, "p.run({full: true})"),
                              **quick).success(
            None, [self.export_text], None, js=DOWNLOAD_ALL, **quick)

        demo.load(**close_on_phone)
        kept(demo.load(self.open_page, [self.storage, self.chatbot, self.search],
                       [self.chatbot, self.current, self.conv_title, *gen, self.conv_list, self.storage_note,
                        self.to_save], js=_js(3, "p.run({open: p.preferred()})"), **quick)).then(
            **remember).then(**refresh).then(self.model_info, None, self.model_md, **quick)
        legacy = self.store.change(self.migrate, [self.store, self.chatbot], [self.chatbot, self.to_save], **quick)
        kept(legacy).then(
            self.forget_legacy, [self.storage, self.store], self.store, js=_js(2, "p.run({full: true})"),
            **quick).then(**refresh)
        demo.unload(self.leave)
        for box in (self.message, *gen):
            box.change(self.budget, [self.chatbot, self.message, *gen], [self.budget_md, self.inspector],
                       trigger_mode="always_last", **quick)
        for box in gen:  # a conversation keeps its settings
            box.change(**{**record_now, "trigger_mode": "always_last"}).then(**saved)
        self.model_box.change(self.defaults_for, [self.model_box, self.preset], self.group_size, **quick)
        self.preset.change(self.apply_preset, [self.preset, self.model_box],
                           [self.weight_format, self.group_size, self.ratio, self.sym, self.all_layers], **quick)
        self.export_btn.click(
            self.export_and_load,
            [self.model_box, self.weight_format, self.group_size, self.ratio, self.sym, self.all_layers,
             self.device, self.engine, self.prompt_lookup],
            [self.export_log, self.model_md], concurrency_limit=1, concurrency_id="export",
            api_visibility="private",
        )
        chat = gr.api(self.api_chat, api_name="chat", concurrency_limit=self.service.places,
                      concurrency_id="generate")
        # A refusal before Gradio queues the call costs it nothing (no session state of its
        # own); gr.api takes no validator, so it is set on the event as Gradio keeps it.
        demo.fns[chat["id"]].validator = self.api_door

    def replace_chat(self, request: gr.Request) -> None:
        """The chat is about to be replaced: a running answer stops and writes nothing more
        (cancelling the event alone cannot interrupt a generator waiting for a token)."""
        self.sessions.replace_chat(request.session_hash)

    def leave(self, request: gr.Request) -> None:
        """The tab closed: stop its answer, in case Gradio has not closed the generator yet."""
        if request.session_hash:
            downloads.remove_files(request.session_hash)
        if self.sessions.forget(request.session_hash):
            log.info("page closed mid-answer: stopping it")

    def refresh(self, request: gr.Request, display: list, message: str, *gen) -> tuple:
        """Files, budget and inspector for the chat as it is now."""
        json_file, md_file = self.files(display, request.session_hash)
        return (json_file, md_file, *self.budget(display, message, *gen))

    def settle(self, request: gr.Request, display: list, message: str, *gen) -> tuple:
        """After every change to the chat: save it in the browser, `refresh`, and give
        the controls back. A Stop that came too late to matter is forgotten here."""
        self.sessions.settle(request.session_hash)
        return (display, *self.refresh(request, display, message, *gen), *self.busy(False))

    def settle_answer(self, request: gr.Request, display: list, message: str, *gen) -> tuple:
        """`settle` after an answer, unless the chat was replaced meanwhile: a cancelled
        answer's settle can read the page before Clear has emptied it, and saving that would
        bring the old chat back (the saved chat refills an empty page)."""
        if not self.sessions.turn_is_current(request.session_hash):
            return (gr.skip(),) * (1 + len(self.SHOWN)) + self.busy(False)  # the store and what it shows
        return self.settle(request, display, message, *gen)

    def restore(self, request: gr.Request, stored: Any, display: list) -> Any:
        """Fill an empty page with the chat kept in the browser, never the other way round:
        the page's load event can run before the browser has read its storage, and
        writing that empty value back would erase the saved chat. Only a page whose chat
        was never replaced is filled: after Clear an empty page is what was asked for."""
        chat = stored_chat(stored)
        fresh = not self.sessions.ever_replaced(request.session_hash)
        return chat if chat and not display and fresh else gr.skip()
