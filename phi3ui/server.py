"""Command line and launch: flags (each with an environment variable), model, server.

    python app.py --model bundled --port 7860
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from pathlib import Path

from .chat import ChatBackend, HostPrompt, LoadRequest
from .chat_presets import PresetError, read_host_file
from .export import ExportError, add_export_arguments, check_source, memory_limit_from_args, settings_from_args
from .fairness import (
    LOCKED_MAX_NEW_TOKENS,
    PUBLIC_CONCURRENCY,
    PUBLIC_RATE_PER_MINUTE,
    FairUse,
    Gate,
    default_concurrency,
    default_max_new_tokens_cap,
    default_rate_limit,
)
from .service import ChatService
from .settings import (
    DEFAULT_MODEL,
    ENGINES,
    KV_CACHE_PRECISIONS,
    READY_MADE,
    REMOTE_ENGINE,
    Limits,
    RemoteSettings,
    RuntimeSettings,
    SettingsError,
)

log = logging.getLogger("phi3ui")


def on_spaces() -> bool:
    return bool(os.environ.get("SPACE_ID"))


def _env(name: str, default):
    value = os.environ.get(name)
    if value is None:
        return default
    if isinstance(default, bool):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return type(default)(value) if default is not None else value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python app.py", description="Chat with Phi-3 on OpenVINO in the browser.")
    parser.add_argument("--model", default=_env("PHI3UI_MODEL", DEFAULT_MODEL),
                        help="hub id, local folder, OpenVINO folder or 'bundled' [PHI3UI_MODEL]")
    parser.add_argument("--ready-made", action=argparse.BooleanOptionalAction,
                        default=_env("PHI3UI_READY_MADE", False),
                        help="download the ready-made OpenVINO int4 export of --model instead of exporting it here "
                             f"(for {', '.join(READY_MADE)}); the export flags then do not apply [PHI3UI_READY_MADE]")
    parser.add_argument("--engine", choices=list(ENGINES), default=_env("PHI3UI_ENGINE", "genai"),
                        help="runtime; 'openai' = a front end to the OpenAI-compatible server at --api-base, "
                             "with no model here [PHI3UI_ENGINE]")
    parser.add_argument("--api-base", default=_env("PHI3UI_API_BASE", None),
                        help="with --engine openai: the remote server's API URL up to its version, e.g. "
                             "http://127.0.0.1:8000/v3 (OVMS) or http://127.0.0.1:7860/v1 (phi3ui, vLLM, "
                             "llama.cpp) [PHI3UI_API_BASE]")
    parser.add_argument("--remote-api-key", default=_env("PHI3UI_REMOTE_API_KEY", None),
                        help="with --engine openai: the bearer key the remote server asks for (not --api-key, "
                             "which is this server's own). Prefer the environment variable [PHI3UI_REMOTE_API_KEY]")
    parser.add_argument("--remote-model", default=_env("PHI3UI_REMOTE_MODEL", ""),
                        help="with --engine openai: the remote's model name; default: the only one it serves "
                             "[PHI3UI_REMOTE_MODEL]")
    parser.add_argument("--remote-timeout", type=float, default=_env("PHI3UI_REMOTE_TIMEOUT", 60.0),
                        help="with --engine openai: seconds to wait for the remote's next byte (its queue and "
                             "prompt reading count) before giving an answer up [PHI3UI_REMOTE_TIMEOUT]")
    parser.add_argument("--device", default=_env("PHI3UI_DEVICE", "CPU"), help="OpenVINO device [PHI3UI_DEVICE]")
    parser.add_argument("--prompt-lookup", action=argparse.BooleanOptionalAction,
                        default=_env("PHI3UI_PROMPT_LOOKUP", False),
                        help="guess tokens from the conversation and check several a step; genai only "
                             "[PHI3UI_PROMPT_LOOKUP]")
    parser.add_argument("--kv-cache-precision", choices=[p for p in KV_CACHE_PRECISIONS if p],
                        default=_env("PHI3UI_KV_CACHE_PRECISION", ""),
                        help="numbers in the KV cache; genai only. u4 halves its memory, and greedy answers "
                             "change (README, Configuration); default: OpenVINO's (u8 on a CPU) "
                             "[PHI3UI_KV_CACHE_PRECISION]")
    parser.add_argument("--host", default=_env("GRADIO_SERVER_NAME", "0.0.0.0" if on_spaces() else "127.0.0.1"),
                        help="address to serve on [GRADIO_SERVER_NAME]")
    parser.add_argument("--port", type=int, default=_env("GRADIO_SERVER_PORT", 7860),
                        help="port [GRADIO_SERVER_PORT]")
    parser.add_argument("--share", action="store_true", default=_env("PHI3UI_SHARE", False),
                        help="make a public link [PHI3UI_SHARE]")
    parser.add_argument("--auth", default=_env("PHI3UI_AUTH", None),
                        help="user:password, or a file with one per line [PHI3UI_AUTH]")
    parser.add_argument("--concurrency", type=int, default=_env("PHI3UI_CONCURRENCY", None),
                        help=f"answers generated at once (batched on the genai engine). Default "
                             f"{PUBLIC_CONCURRENCY} on a public server (--share, --auth, Spaces), so a visitor "
                             "never waits for another's whole answer; 1 otherwise [PHI3UI_CONCURRENCY]")
    parser.add_argument("--queue-size", type=int, default=_env("PHI3UI_QUEUE_SIZE", 64),
                        help="requests that may wait [PHI3UI_QUEUE_SIZE]")
    parser.add_argument("--max-message-chars", type=int, default=_env("PHI3UI_MAX_MESSAGE_CHARS", 16_000),
                        help="longest message accepted [PHI3UI_MAX_MESSAGE_CHARS]")
    parser.add_argument("--context-window", type=int, default=_env("PHI3UI_CONTEXT_WINDOW", None),
                        help="cap the context window below the model's own, in tokens (at least "
                             f"{Limits.MIN_CONTEXT_WINDOW}) [PHI3UI_CONTEXT_WINDOW]")
    parser.add_argument("--lock-settings", action=argparse.BooleanOptionalAction,
                        default=_env("PHI3UI_LOCK_SETTINGS", on_spaces()),
                        help="visitors cannot export or switch model or device, nor change the host's "
                             "system prompt (default on Spaces) [PHI3UI_LOCK_SETTINGS]")
    parser.add_argument("--system-prompt", default=_env("PHI3UI_SYSTEM_PROMPT", ""),
                        help="the host's system prompt: the default, or with --lock-settings the only one "
                             "[PHI3UI_SYSTEM_PROMPT]")
    parser.add_argument("--show-system-prompt", action=argparse.BooleanOptionalAction,
                        default=_env("PHI3UI_SHOW_SYSTEM_PROMPT", False),
                        help="with --lock-settings, let visitors read the host's system prompt (off: the page "
                             "only says one is in force) [PHI3UI_SHOW_SYSTEM_PROMPT]")
    parser.add_argument("--chat-presets", metavar="FILE", default=_env("PHI3UI_CHAT_PRESETS", None),
                        help="a JSON file of chat presets visitors can pick: [{\"name\": …, \"system_prompt\": …, "
                             "\"settings\": {…}}], settings by the page's names; a locked system prompt stays the "
                             "host's [PHI3UI_CHAT_PRESETS]")
    parser.add_argument("--rate-limit", type=int, default=_env("PHI3UI_RATE_LIMIT", None),
                        help="requests a minute one client address may send; also at most one answer at a "
                             f"time per address. 0 = off; default {PUBLIC_RATE_PER_MINUTE} on a public server (--share, "
                             "--auth, "
                             "Spaces), otherwise off [PHI3UI_RATE_LIMIT]")
    parser.add_argument("--max-new-tokens-cap", type=int, default=_env("PHI3UI_MAX_NEW_TOKENS_CAP", None),
                        help="most new tokens a request may ask for; more is refused. Default "
                             f"{LOCKED_MAX_NEW_TOKENS} with --lock-settings, otherwise {Limits.max_new_tokens} "
                             "[PHI3UI_MAX_NEW_TOKENS_CAP]")
    parser.add_argument("--api-key", default=_env("PHI3UI_API_KEY", None),
                        help="the key OpenAI API clients send as a bearer token to /v1. Without one, /v1 is "
                             "served only by a server on loopback with no --share, --auth or --trust-proxy, not "
                             "on Spaces. Prefer the environment variable: a flag shows in the process list "
                             "[PHI3UI_API_KEY]")
    parser.add_argument("--trust-proxy", action=argparse.BooleanOptionalAction,
                        default=_env("PHI3UI_TRUST_PROXY", on_spaces()),
                        help="behind a reverse proxy: a client is the first X-Forwarded-For address, not "
                             "the proxy's (default on Spaces) [PHI3UI_TRUST_PROXY]")
    add_export_arguments(parser)
    args = parser.parse_args(argv)
    public = args.share or on_spaces() or bool(args.auth)
    if args.rate_limit is None:
        args.rate_limit = default_rate_limit(public)
    if args.concurrency is None:
        args.concurrency = default_concurrency(public)
    if args.max_new_tokens_cap is None:
        args.max_new_tokens_cap = default_max_new_tokens_cap(args.lock_settings, Limits.max_new_tokens)
    if args.rate_limit < 0:
        parser.error(f"--rate-limit must be 0 (off) or more, not {args.rate_limit}.")
    if args.max_new_tokens_cap < 1:
        parser.error(f"--max-new-tokens-cap must be at least 1, not {args.max_new_tokens_cap}.")
    for flag, value in (("--concurrency", args.concurrency), ("--queue-size", args.queue_size),
                        ("--max-message-chars", args.max_message_chars)):
        if value < 1:
            parser.error(f"{flag} must be at least 1, not {value}.")
    if args.engine == REMOTE_ENGINE and not args.api_base:
        parser.error("--engine openai needs --api-base, the remote server's URL (e.g. http://127.0.0.1:8000/v3).")
    if args.engine != REMOTE_ENGINE and args.api_base:
        parser.error("--api-base applies to --engine openai only.")
    if args.remote_timeout <= 0:
        parser.error(f"--remote-timeout must be above 0 seconds, not {args.remote_timeout:g}.")
    if args.ready_made and args.model not in READY_MADE.values():
        if args.model not in READY_MADE:
            parser.error(f"--ready-made knows {', '.join(READY_MADE)}, not {args.model}. Pass a hub repo of OpenVINO IR "
                         "or an exported folder with --model instead.")
        args.model = READY_MADE[args.model]
    try:  # what an export would refuse at once: told now, not after the page is up
        settings_from_args(args).validate()
        memory_limit_from_args(args)
        check_source(args.model)
    except (SettingsError, ExportError) as exc:
        parser.error(str(exc))
    if args.context_window is not None and args.context_window < Limits.MIN_CONTEXT_WINDOW:
        parser.error(f"--context-window must be at least {Limits.MIN_CONTEXT_WINDOW}, not {args.context_window}.")
    try:  # held to the limits visitors will have
        args.host_presets = read_host_file(args.chat_presets, Limits(
            max_message_chars=args.max_message_chars, max_new_tokens=args.max_new_tokens_cap)) \
            if args.chat_presets else ()
    except PresetError as exc:
        parser.error(str(exc))
    return args


def read_auth(value: str | None) -> list[tuple[str, str]] | None:
    """`user:password`, or a file of such lines."""
    if not value:
        return None
    lines = Path(value).read_text().splitlines() if Path(value).is_file() else [value]
    pairs = [tuple(line.strip().split(":", 1)) for line in lines if line.strip() and not line.startswith("#")]
    if not pairs or any(len(p) != 2 or not all(p) for p in pairs):
        raise SettingsError("--auth takes user:password, or a file with one user:password per line.")
    return pairs  # type: ignore[return-value]


def report_share(share_requested: bool, share_url: str | None, local_url: str) -> str | None:
    """What to tell the operator when --share could not make a link (no network, blocked
    tunnel, or Spaces, which has its own URL): the app goes on serving locally."""
    if share_requested and not share_url:
        return (f"Could not make a public share link (no network, or the tunnel is blocked). "
                f"Still serving locally at {local_url}")
    return None


def prepare(backend: ChatBackend, startup: LoadRequest) -> None:
    """Load the model at start (in a thread of its own: the page is served meanwhile). A
    failure stays on the page and in /health; the server keeps running to say so."""
    try:
        backend.load(startup.model, startup.export, startup.runtime, fallback=True)
    except Exception as exc:  # noqa: BLE001 - told on the page, /health and here
        log.error("No model could be loaded: %s", exc, exc_info=not isinstance(exc, (SettingsError, ExportError)))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per download request and health check
    for name in ("GRADIO_ANALYTICS_ENABLED", "HF_HUB_DISABLE_TELEMETRY", "DO_NOT_TRACK"):  # no telemetry
        os.environ.setdefault(name, "False" if name.startswith("GRADIO") else "1")
    args = parse_args(argv)
    try:
        auth = read_auth(args.auth)
        memory_limit = memory_limit_from_args(args)
        backend = ChatBackend(limits=Limits(max_message_chars=args.max_message_chars, context_window=args.context_window,
                                            max_new_tokens=args.max_new_tokens_cap),
                              concurrency=args.concurrency, export_memory_limit=memory_limit,
                              host_prompt=HostPrompt(args.system_prompt, locked=args.lock_settings,
                                                     shown=args.show_system_prompt or not args.lock_settings))
        remote = RemoteSettings(args.api_base, args.remote_api_key, args.remote_model, args.remote_timeout) \
            if args.engine == REMOTE_ENGINE else None
        runtime = RuntimeSettings(engine=args.engine, device=args.device, prompt_lookup=args.prompt_lookup,
                                  kv_cache_precision=args.kv_cache_precision, remote=remote).validate()
        startup = LoadRequest(args.model, settings_from_args(args), runtime)
    except SettingsError as exc:
        log.error("%s", exc)
        return 1
    if args.share and not auth:
        log.warning("Sharing a public link without --auth: anyone with the link can use this machine's model.")
    if backend.host_prompt.locked and backend.host_prompt.text and any(p.system_prompt for p in args.host_presets):
        log.warning("The chat presets' system prompts do not apply: with --lock-settings, --system-prompt is the "
                    "only system prompt.")
    if args.concurrency > 1 and not ENGINES[args.engine].batches:
        log.info("The %s engine answers one message at a time; --concurrency %d lets the others wait "
                 "their turn. The genai engine answers them together.", args.engine, args.concurrency)

    from .openai_api import Access, OpenAIApi  # FastAPI, which comes with Gradio
    from starlette.middleware import Middleware

    from .status import NotReady, StatusApi
    from .ui import Page, gradio_internals  # Gradio loads only when serving

    # One way in for the page, /chat and /v1: the same queue, the same fair-use limits.
    service = ChatService(backend, Gate(FairUse(rate_per_minute=args.rate_limit)), waiting=args.queue_size)
    page = Page(backend, lock_settings=args.lock_settings, service=service, trust_proxy=args.trust_proxy,
                startup=startup, host_presets=args.host_presets)
    access = Access.decide(args.api_key, host=args.host, share=args.share, spaces=on_spaces(),
                           page_login=bool(auth), behind_proxy=args.trust_proxy)
    api = OpenAIApi(backend, access=access, service=service, lock_settings=args.lock_settings,
                    trust_proxy=args.trust_proxy)
    log.info("Fair use: %s; at most %d new tokens a request; clients told apart by %s.",
             f"{args.rate_limit} requests a minute and one answer at a time per client address"
             if args.rate_limit else "no per-client limits (one answer at a time per browser session)",
             args.max_new_tokens_cap, "the first X-Forwarded-For address" if args.trust_proxy else "peer address")
    status = StatusApi(service, access)
    demo = page.build()
    demo.queue(default_concurrency_limit=args.concurrency, max_size=args.queue_size)
    gradio_internals.poll_the_queue_less(demo)
    # /v1 is mounted ahead of the page's routes, outside Gradio's login (it checks its own key).
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, auth=auth,
                show_error=not args.lock_settings, max_file_size="5mb", footer_links=["api"], prevent_thread_lock=True,
                # Answers waiting for a slot each hold a worker thread: room for all of them
                # besides Gradio's own 40 for everything else.
                max_threads=40 + service.places,
                app_kwargs={"routes": [api.mount(), *status.routes()],
                            "middleware": [Middleware(NotReady, status=status)]})
    log.info("%s", access.describe(f"{demo.local_url.rstrip('/')}/v1"))
    # The page is up: the model is downloaded, exported and loaded meanwhile, and the page,
    # /health and the terminal show how far that has got.
    threading.Thread(target=prepare, args=(backend, startup), name="phi3ui-prepare", daemon=True).start()
    if problem := report_share(args.share, demo.share_url, demo.local_url):
        log.warning(problem)
    demo.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
