"""The chat: sending a message, streaming its answer, Stop, the context budget and the
prompt inspector, and /chat, the same chat as an API (retry, undo and edit are in
versions_row.py: they keep versions). Only `ChatService` and `ChatBackend` are called; all
model work happens there."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import gradio as gr

from .. import downloads, window
from .. import prompt as prompts
from ..attachments import Attachment, read_upload
from ..display import STOPPED, chat_messages, file_message, note, shown, stats_title, to_display
from ..errors import Problem, report
from ..export import ExportError
from ..fairness import LimitReached
from ..json_answers import JSON_OBJECT
from ..service import Caller
from ..settings import SETTING, GenerationSettings, SettingsError
from ..structured import STRUCTURE_MARK

log = logging.getLogger(__name__)

STREAM_INTERVAL_S = 0.05  # one update of a streamed answer per 50 ms at most (page and /chat)
USER_ERRORS = (SettingsError, prompts.PromptError, ExportError)
DETAILS = 4  # what `details` returns: the JSON and Markdown files, the budget, the inspector (Components.details)


def _default(name: str) -> Any:
    return SETTING[name].default


class ChatEvents:
    """The chat's events; mixed into `Page`, which holds the backend, service and sessions."""

    # --- helpers -----------------------------------------------------------------------
    @staticmethod
    def settings(max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed, system_prompt,
                 answer_json=False, json_schema="") -> GenerationSettings:
        """The sidebar's values (in settings.GENERATION_TABLE order) as settings; answers as
        JSON with an empty schema box fit any JSON object."""
        return GenerationSettings.from_values(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
            repetition_penalty=repetition_penalty, seed=None if seed in (None, "", -1) else seed,
            system_prompt=system_prompt or "",
            json_schema=((json_schema or "").strip() or JSON_OBJECT) if answer_json else "",
        )

    def problem(self, exc: BaseException, door: str = "page") -> Problem:
        """How a refusal or failure reads to this page's visitors (errors.problem): a
        locked server's visitors get no exception text; a failure's details go to the log."""
        return report(exc, self.lock_settings, door)

    def caller(self, door: str, request: gr.Request | None) -> Caller:
        return Caller.of(door, request, self.trust_proxy)

    @staticmethod
    def typed(message: Any) -> tuple[str, list[Attachment]]:
        """The message box's text and its files, read (an AttachmentError names a bad one)."""
        if not isinstance(message, dict):
            return str(message or ""), []
        return str(message.get("text") or ""), [read_upload(path) for path in message.get("files") or []]

    def fit(self, display: list, text: str, files: list[Attachment], settings: GenerationSettings,
            draft: bool = False) -> prompts.Fitted:
        """The backend's fitted prompt for the chat plus this message and its files (the
        files only named when there are some: a stand-in backend need not know of them)."""
        return self.backend.prepare(chat_messages(display), text, settings, draft=draft,
                                    **({"files": files} if files else {}))

    def budget(self, display: list, message: Any, *gen) -> tuple:
        """The context budget and the prompt inspector's text for the chat plus the box's
        text and files; left as they are while the server is already working out as many as
        it allows. An empty box still shows the conversation (with an empty next turn)
        instead of an 'empty message' error."""
        if not self._budget_slots.acquire(blocking=False):
            return gr.skip(), gr.skip()
        try:
            text, files = self.typed(message)
            fitted = self.fit(display or [], text if text.strip() else "", files, self.settings(*gen), draft=True)
        except USER_ERRORS as exc:
            return f"⚠️ {to_display(str(exc))}", ""  # it may quote what the visitor typed
        finally:
            self._budget_slots.release()
        dropped = (f" · ✂️ the model no longer sees the {fitted.dropped_exchanges} oldest exchange(s) "
                   f"(above the ✂️ mark; it reads from exchange {fitted.dropped_exchanges + 1} on)"
                   if fitted.dropped_exchanges else "")
        counted = (f" · counted: {', '.join(to_display(f.chip) for f in files)}" if files else "")
        budget = (f"**Context** {fitted.used_tokens:,} of {fitted.window:,} tokens "
                  f"({fitted.prompt_tokens:,} prompt + {fitted.max_new_tokens:,} for the answer){counted}{dropped}")
        sent = fitted.prompt.shown().replace("\n", "⏎\n")
        return budget, (f"{fitted.prompt_tokens} tokens. The chat template's own text is marked "
                        f"{STRUCTURE_MARK.format('…')}; everything else is read as plain text.\n\n{sent}")

    # --- chat events --------------------------------------------------------------------
    @staticmethod
    def controls(answering: bool) -> tuple[dict, dict, dict]:
        """Message box, Send and Stop while an answer streams (Stop only) and after."""
        return gr.update(interactive=not answering), gr.update(visible=not answering), gr.update(visible=answering)

    def submit(self, message: Any, display: list, *gen) -> tuple:
        """Check the message and its files before they leave the box: on error they stay there."""
        text = (message.get("text") or "") if isinstance(message, dict) else str(message or "")
        try:
            text, files = self.typed(message)
            self.fit(display, text, files, self.settings(*gen))
        except USER_ERRORS as exc:
            held = isinstance(message, dict) and message.get("files")
            kept = (" Nothing was sent; your text and files are still in the box." if held else
                    " Nothing was sent; your text is still in the box." if text.strip() else "")
            raise gr.Error(f"{exc}{kept}", print_exception=False) from None  # the visitor's to fix
        box, send, stop = self.controls(True)
        sent = [{"role": "user", "content": shown(text)}, *map(file_message, files)]
        return {**box, "value": ""}, [*display, *sent], send, stop

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
    def example(data: gr.SelectData) -> str:
        return data.value["text"]

    # --- after every change -------------------------------------------------------------
    @staticmethod
    def files(display: list, session: str) -> tuple[str | None, str | None]:
        """The chat as files to download; none without a session id (no folder of its own)."""
        if not session:
            return None, None
        return downloads.write_files(chat_messages(display) if display else [], session)

    def details(self, request: gr.Request, display: list, message: Any, *gen) -> tuple:
        """The chat's files, budget and inspector as it is now (Components.details)."""
        json_file, md_file = self.files(display, request.session_hash)
        return (json_file, md_file, *self.budget(display, message, *gen))

    def changed(self, request: gr.Request, display: list, message: Any, *gen) -> tuple:
        """After every change to the chat: mark it unsaved (conversation_list saves it) and
        its details. A Stop that came too late to matter is forgotten."""
        self.sessions.settle(request.session_hash)
        return (display, *self.details(request, display, message, *gen))

    def after_change(self, request: gr.Request, display: list, message: Any, *gen) -> tuple:
        """`changed`, and the controls back."""
        return (*self.changed(request, display, message, *gen), *self.controls(False))

    def after_answer(self, request: gr.Request, display: list, message: Any, *gen) -> tuple:
        """`changed` after an answer, unless the chat was replaced meanwhile: a cancelled
        answer's step can read the page before Clear has emptied it, and saving that would
        bring the old chat back into the conversation. The controls come back only once the
        answer is saved (phi3ui/ui/page.py), so Send showing again means it is kept: a
        reload then finds it."""
        if not self.sessions.turn_is_current(request.session_hash):
            return (gr.skip(),) * (1 + DETAILS)  # unsaved and the details
        return self.changed(request, display, message, *gen)

    def replace_chat(self, request: gr.Request) -> None:
        """The chat is about to be replaced: a running answer stops and writes nothing more
        (cancelling the event alone cannot interrupt a generator waiting for a token)."""
        self.sessions.replace_chat(request.session_hash)

    def tab_closed(self, request: gr.Request) -> None:
        """The tab closed: stop its answer, in case Gradio has not closed the generator yet."""
        if request.session_hash:
            downloads.remove_files(request.session_hash)
        if self.sessions.forget(request.session_hash):
            log.info("page closed mid-answer: stopping it")

    # --- /chat -----------------------------------------------------------------------------
    def api_chat(self, message: str, history: list[dict] | None = None,
                 max_new_tokens: int = _default("max_new_tokens"), temperature: float = _default("temperature"),
                 top_p: float = _default("top_p"), top_k: int = _default("top_k"),
                 repetition_penalty: float = _default("repetition_penalty"), seed: int | None = _default("seed"),
                 system_prompt: str = _default("system_prompt"), json_schema: str = _default("json_schema"),
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
            # problem() has logged it, with the traceback where it is the server's fault
            raise gr.Error(self.problem(exc, "/chat").text, print_exception=False) from None

    def api_door(self, request: gr.Request, *values: Any) -> tuple:
        """/chat's check before the call is queued: a client that already has an answer
        (or its rate) used up is refused at once. `api_chat` still takes the ticket: a burst
        that arrives all at once passes this check together and is refused there."""
        caller = self.caller("/chat", request)
        try:
            self.service.gate.check(caller.client, caller.session)
        except LimitReached as exc:
            self.service.refused(caller.door, exc.limit, f"before the queue; retry in {exc.retry_after_s} s")
            raise gr.Error(str(exc), print_exception=False) from None
        return tuple(gr.validate(True, "") for _ in values)
