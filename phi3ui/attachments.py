"""Files in the prompt: a file's bytes read into text, or a clear refusal naming the file.

Plain text, Markdown, code, CSV and JSON are read as UTF-8; a PDF's text is extracted with
pypdf. The type is decided by the content first (a PDF starts with `%PDF-`) and the name's
extension second. Binary files (NUL bytes, text that is not UTF-8, or an extension that is
never text), PDFs with no text to extract (scanned, image-only, damaged or encrypted) or that
take over PDF_SECONDS to read, and files over MAX_BYTES are refused with an `AttachmentError`
whose text names the file.

A file's text reaches the model as delimited text inside the user message (`message_with`):
a fenced block headed by the file's name, fenced longer than any backtick run in it. It is
text like any other typed text: the engine tokenizes special-token strings in messages as
plain text (phi3ui/engine.py, `plain_text_tokenizer`), so a file holding `<|user|>` or
`<|end|>` cannot close the message or open another turn. Whole files go in the prompt: a
file that does not fit the context window is refused, never searched for relevant parts.

No Gradio here: the page (phi3ui/ui/chat.py) and /v1 (phi3ui/openai_api.py) both use it.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import pdf_text
from .prompt import PromptError, message_text

MAX_BYTES = 4 * 1024 * 1024  # below the page's upload limit (5 MB), so this message is the one shown
MAX_NAME_CHARS = 200
PDF_SECONDS = 15.0  # a PDF that takes longer to read is refused (phi3ui/pdf_text.py says why)
PDF_MAGIC = b"%PDF-"
# extensions that are never text, whatever their bytes look like
BINARY_EXTENSIONS = frozenset(
    "png jpg jpeg gif webp bmp tiff ico heic zip gz tgz bz2 xz 7z rar tar exe dll so dylib bin "
    "class jar pyc o a docx xlsx pptx odt ods doc xls ppt mp3 wav ogg flac mp4 mkv mov avi webm "
    "woff woff2 ttf otf sqlite db onnx gguf safetensors pt npy npz".split())
# the fence's language for the extensions Markdown names differently (otherwise the extension)
LANGUAGES = {"md": "markdown", "py": "python", "js": "javascript", "ts": "typescript", "txt": "text",
             "sh": "bash", "yml": "yaml", "rs": "rust", "rb": "ruby", "kt": "kotlin", "h": "c", "hpp": "cpp"}
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_BACKTICKS = re.compile(r"`+")
_DATA_URL = re.compile(r"data:([^;,]*)(?:;[^,]*)?;base64,(.*)", re.S)


class AttachmentError(PromptError):
    """A file that cannot go into the prompt; the text names it and says why."""


@dataclass(frozen=True)
class Attachment:
    """A file as the model reads it: its name, its size in bytes and its text."""

    name: str
    size: int
    text: str

    @property
    def chip(self) -> str:
        """How the page shows it: name and size."""
        return f"📎 {self.name} · {human_size(self.size)}"

    def block(self) -> str:
        """The file as delimited text in the message: its name, then its text fenced."""
        fence = "`" * max(3, 1 + max((len(run) for run in _BACKTICKS.findall(self.text)), default=0))
        language = LANGUAGES.get(extension(self.name), extension(self.name))
        return f"File: {self.name}\n{fence}{language}\n{self.text}\n{fence}"

    def record(self) -> dict:
        """As a conversation record and its export keep it (phi3ui/conversations.py)."""
        return {"name": self.name, "size": self.size, "text": self.text}

    @classmethod
    def from_record(cls, value: Any) -> Attachment:
        """A kept attachment, checked; a ValueError says what is wrong with it."""
        if not isinstance(value, dict):
            raise ValueError("An attachment must be a {name, size, text} object.")
        name, size, text = value.get("name"), value.get("size"), value.get("text")
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS:
            raise ValueError("An attachment needs a name.")
        if type(size) is not int or size < 0:
            raise ValueError(f"The attachment {name!r} needs its size in bytes.")
        if not isinstance(text, str):
            raise ValueError(f"The attachment {name!r} needs its text.")
        return cls(name, size, text)


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB"
    return f"{size / (1024 * 1024):.1f} MB"


def extension(name: str) -> str:
    return Path(name).suffix.lower().lstrip(".")


def clean_name(name: str) -> str:
    """A file name as shown and put in the prompt: its last part, on one line."""
    name = " ".join(str(name).replace("\\", "/").rsplit("/", 1)[-1].split())[:MAX_NAME_CHARS]
    return name or "file"


def read(data: bytes, name: str) -> Attachment:
    """A file's bytes as text, or an AttachmentError naming it."""
    name = clean_name(name)
    if len(data) > MAX_BYTES:
        raise _too_large(name)
    if data.startswith(PDF_MAGIC):
        return Attachment(name, len(data), _pdf_text(data, name))
    if extension(name) == "pdf":
        raise AttachmentError(f"“{name}” is named .pdf but is not a PDF file.")
    return Attachment(name, len(data), _plain_text(data, name))


def read_path(path: str | Path, name: str | None = None) -> Attachment:
    """A file on disk (the page's upload), by the name the user gave it."""
    path = Path(path)
    name = name or path.name
    try:
        if path.stat().st_size > MAX_BYTES:
            raise _too_large(clean_name(name))
        data = path.read_bytes()
    except OSError:
        raise AttachmentError(f"“{clean_name(name)}” could not be read.") from None
    return read(data, name)


def read_upload(path: str | Path) -> Attachment:
    """A file the page uploaded (Gradio keeps it under its own name), read once while it is
    unchanged, refusal included: the context budget asks again on every keystroke."""
    try:
        stat = Path(path).stat()
    except OSError:
        raise AttachmentError(f"“{clean_name(Path(path).name)}” could not be read.") from None
    result = _read_unchanged(str(path), stat.st_size, stat.st_mtime_ns)
    if isinstance(result, AttachmentError):
        raise result
    return result


@lru_cache(maxsize=32)
def _read_unchanged(path: str, size: int, mtime_ns: int) -> Attachment | AttachmentError:
    try:
        return read_path(path)
    except AttachmentError as refused:
        return refused


def from_data_url(file_data: Any, filename: Any) -> Attachment:
    """OpenAI's `file` content part: base64 `file_data` (a data: URL or bare base64) and a filename."""
    if not isinstance(filename, str) or not filename.strip():
        raise AttachmentError("A file part needs a 'filename'.")
    if not isinstance(file_data, str):
        raise AttachmentError(f"The file part “{clean_name(filename)}” needs its content as base64 'file_data'.")
    found = _DATA_URL.fullmatch(file_data.strip())
    encoded = found[2] if found else file_data
    if len(encoded) > MAX_BYTES * 4 // 3 + 4:
        raise _too_large(clean_name(filename))
    try:
        data = base64.b64decode(re.sub(r"\s+", "", encoded), validate=True)
    except (binascii.Error, ValueError):
        raise AttachmentError(f"The file part “{clean_name(filename)}” is not valid base64.") from None
    return read(data, filename)


def openai_content(content: Any) -> str:
    """OpenAI's message content as the model reads it: a string, or text and `file` parts
    ({"type": "file", "file": {"filename", "file_data"}}), each file as `message_with` puts
    it. Other parts (images, audio, a `file_id` this server never stored) are refused."""
    if not isinstance(content, list):
        return message_text(content)
    files = [_file_part(part) for part in content if isinstance(part, dict) and part.get("type") == "file"]
    texts = [part for part in content if not (isinstance(part, dict) and part.get("type") == "file")]
    return message_with(message_text(texts) if texts else "", files)


def _file_part(part: dict) -> Attachment:
    file = part.get("file")
    if not isinstance(file, dict):
        raise AttachmentError("A file part needs a 'file' object with 'filename' and 'file_data'.")
    if "file_id" in file and "file_data" not in file:
        raise AttachmentError("File parts by 'file_id' are not supported (this server keeps no files): "
                              "send the file as base64 'file_data' with its 'filename'.")
    return from_data_url(file.get("file_data"), file.get("filename"))


def message_with(text: str, files: Sequence[Attachment]) -> str:
    """The message the model reads: the typed text, then each file as a delimited block."""
    return "\n\n".join([part for part in (text,) if part.strip()] + [f.block() for f in files])


def _too_large(name: str) -> AttachmentError:
    return AttachmentError(f"“{name}” is larger than {human_size(MAX_BYTES)}, the most a file can be.")


def _plain_text(data: bytes, name: str) -> str:
    binary = (f"“{name}” looks like a binary file, not text: files can be text, Markdown, code, CSV, "
              "JSON or PDF.")
    if extension(name) in BINARY_EXTENSIONS or b"\x00" in data:
        raise AttachmentError(binary)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise AttachmentError(f"{binary} (It is not UTF-8 text.)") from None
    if len(_CONTROL.findall(text[:4096])) > 8:
        raise AttachmentError(binary)
    text = text.replace("\r\n", "\n")
    if not text.strip():
        raise AttachmentError(f"“{name}” is empty.")
    return text


def _pdf_text(data: bytes, name: str) -> str:
    result = pdf_text.pages(data, PDF_SECONDS)
    error = result.get("error")
    if error == "encrypted":
        raise AttachmentError(f"“{name}” is a password-protected PDF; its text cannot be read.")
    if error == "slow":
        raise AttachmentError(f"“{name}” is a PDF that takes too long to read (over {PDF_SECONDS:g} s): "
                              "paste the part you need as text instead.")
    if error == "failed":
        raise AttachmentError(f"“{name}” could not be read: the server could not start its PDF reader.")
    pages = result.get("pages")
    if error or not isinstance(pages, list):
        raise AttachmentError(f"“{name}” is a PDF that could not be read (damaged or unsupported).")
    text = "\n\n".join(page for page in pages if isinstance(page, str) and page)
    if not text.strip():
        raise AttachmentError(f"“{name}” is a PDF with no text to read (scanned or only images).")
    return _CONTROL.sub("", text)
