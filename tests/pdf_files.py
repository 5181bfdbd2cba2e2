"""Small PDF files written byte by byte, for the attachment tests: one with text (Helvetica,
one line a text object), one whose only page draws an image (a scan has no text to read), and
one of a few kilobytes that takes minutes to read."""

from __future__ import annotations

import zlib


def _pdf(objects: list[bytes]) -> bytes:
    """A PDF of these objects (1 is the catalog), with its cross-reference table."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    table = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, table)
    return bytes(out)


def _stream(content: bytes, extra: bytes = b"") -> bytes:
    return b"<< /Length %d %s>>\nstream\n%s\nendstream" % (len(content), extra, content)


def text_pdf(lines: list[str]) -> bytes:
    """A one-page PDF showing these lines (ASCII; parentheses and backslashes escaped)."""
    def shown(line: str) -> bytes:
        return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)").encode("ascii")

    content = b"\n".join(b"BT /F1 12 Tf 72 %d Td (%s) Tj ET" % (720 - 16 * i, shown(line))
                         for i, line in enumerate(lines))
    return _pdf([b"<< /Type /Catalog /Pages 2 0 R >>",
                 b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                 (b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
                  b"/Resources << /Font << /F1 5 0 R >> >> >>"),
                 _stream(content),
                 b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"])


def image_only_pdf() -> bytes:
    """A one-page PDF whose page is a 2x2 grey image and nothing else, as a scan is."""
    return _pdf([b"<< /Type /Catalog /Pages 2 0 R >>",
                 b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                 (b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
                  b"/Resources << /XObject << /Im1 5 0 R >> >> >>"),
                 _stream(b"q 400 0 0 400 100 200 cm /Im1 Do Q"),
                 _stream(b"\x80\x40\x40\x80", b"/Type /XObject /Subtype /Image /Width 2 /Height 2 "
                                                b"/ColorSpace /DeviceGray /BitsPerComponent 8 ")])


def slow_pdf(operators: int = 1_000_000) -> bytes:
    """A one-page PDF whose compressed content stream unpacks to `operators` text-showing
    operators: some 30 KB that pypdf reads for minutes (the default) on this kind of machine."""
    content = zlib.compress(b"BT /F1 12 Tf 10 10 Td " + b"(ab) Tj 1 0 Td " * operators + b"ET", 9)
    return _pdf([b"<< /Type /Catalog /Pages 2 0 R >>",
                 b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                 (b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
                  b"/Resources << /Font << /F1 5 0 R >> >> >>"),
                 _stream(content, b"/Filter /FlateDecode "),
                 b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"])
