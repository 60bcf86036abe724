"""Invoice PDFs (billing.invoicing.pdf): real PDF bytes, deterministic, with the billed text in them.

No PDF text extractor is installed (no poppler, no pypdf), so the tests render with
``compress=False`` and decode the page streams themselves: fpdf2 writes a classic xref
table, direct ``/Length`` values, ``Tf`` font selections and ``Tj`` strings; embedded
TrueType text is glyph ids, mapped back to Unicode through each font's ``/ToUnicode``
CMap, exactly as a PDF viewer does for copy and paste.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import NamedTuple

import pytest

from billing.invoicing import pdf as billing_pdf
from billing.invoicing.pdf import (
    DocumentLine,
    InvoiceDocument,
    Party,
    TaxRow,
    TierRow,
    format_money,
    render_invoice_pdf,
)

# --- a minimal reader for the uncompressed PDFs fpdf2 writes ----------------------------

_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}
_ARRAY_STRINGS = re.compile(rb"\(((?:\\.|[^\\)])*)\)", re.S)


def _unescape(literal: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(literal):
        ch = literal[i : i + 1]
        if ch != b"\\":
            out += ch
            i += 1
            continue
        nxt = literal[i + 1 : i + 2]
        if nxt in _ESCAPES:
            out += _ESCAPES[nxt]
            i += 2
        elif nxt.isdigit():
            octal = re.match(rb"[0-7]{1,3}", literal[i + 1 : i + 4])
            assert octal is not None
            out.append(int(octal.group(), 8) & 0xFF)
            i += 1 + len(octal.group())
        elif nxt == b"\n":
            i += 2
        else:
            out += nxt
            i += 2
    return bytes(out)


def _objects(data: bytes) -> dict[int, tuple[bytes, bytes]]:
    """Object number -> (dictionary text, stream bytes), located through the xref table."""
    startxref = int(data[data.rindex(b"startxref") + 9 :].split()[0])
    xref = data[startxref:]
    assert xref.startswith(b"xref"), "expected a classic xref table"
    first, count = (int(v) for v in xref.split(b"\n")[1].split())
    entries = xref.split(b"\n")[2 : 2 + count]
    objects = {}
    for number, entry in enumerate(entries, start=first):
        offset, _, kind = entry.split()[:3]
        if kind != b"n":
            continue
        start = int(offset)
        end_obj = data.index(b"endobj", start)
        stream_at = data.find(b"stream\n", start, end_obj)
        if stream_at == -1:
            objects[number] = (data[start:end_obj], b"")
            continue
        head = data[start:stream_at]
        length = int(re.search(rb"/Length (\d+)", head).group(1))  # type: ignore[union-attr]
        body_start = stream_at + len(b"stream\n")
        objects[number] = (head, data[body_start : body_start + length])
    return objects


def _to_unicode(cmap: bytes) -> dict[int, str]:
    mapping: dict[int, str] = {}
    for block in re.findall(rb"beginbfchar(.*?)endbfchar", cmap, re.S):
        for src, dst in re.findall(rb"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>", block):
            mapping[int(src, 16)] = bytes.fromhex(dst.decode()).decode("utf-16-be")
    for block in re.findall(rb"beginbfrange(.*?)endbfrange", cmap, re.S):
        for lo, hi, dst in re.findall(rb"<(\w+)>\s*<(\w+)>\s*<(\w+)>", block):
            base = int(dst, 16)
            for offset, code in enumerate(range(int(lo, 16), int(hi, 16) + 1)):
                mapping[code] = chr(base + offset)
    return mapping


class TextRun(NamedTuple):
    """One text object (BT ... ET) as drawn: its font, size and text."""

    font: str  # BaseFont without the subset tag, e.g. "DejaVuSansBold", "Helvetica"
    size: float
    text: str


_TEXT_OPS = re.compile(
    rb"/(?P<font>[A-Za-z0-9]+)\s+(?P<size>[\d.]+)\s+Tf"
    rb"|\((?P<tj>(?:\\.|[^\\)])*)\)\s*Tj"
    rb"|\[(?P<tjarray>(?:\\.|[^\\\]])*)\]\s*TJ"
    rb"|(?P<et>\bET\b)",
    re.S,
)


def pdf_runs(data: bytes) -> list[list[TextRun]]:
    """The text runs of each page, in drawing order."""
    objects = _objects(data)
    # font object -> (BaseFont, ToUnicode map or None for a latin-1 core font)
    fonts: dict[int, tuple[str, dict[int, str] | None]] = {}
    for number, (head, _) in objects.items():
        if b"/Type /Font" not in head or b"/FontDescriptor" in head:
            continue
        base = re.search(rb"/BaseFont /(?:[A-Z]{6}\+)?([\w-]+)", head).group(1).decode()  # type: ignore[union-attr]
        tounicode = re.search(rb"/ToUnicode (\d+) 0 R", head)
        cmap = _to_unicode(objects[int(tounicode.group(1))][1]) if tounicode else None
        fonts[number] = (base, cmap)
    font_names: dict[bytes, int] = {}
    for head, _ in objects.values():
        for font_dict in re.findall(rb"/Font\s*<<(.*?)>>", head, re.S):
            for name, number in re.findall(rb"/(\w+) (\d+) 0 R", font_dict):
                font_names[name] = int(number)
    pages_head = next(head for head, _ in objects.values() if b"/Type /Pages" in head)
    kids = [int(n) for n in re.findall(rb"(\d+) 0 R", pages_head.split(b"/Kids")[1])]
    pages = []
    for page in kids:
        contents = int(re.search(rb"/Contents (\d+) 0 R", objects[page][0]).group(1))  # type: ignore[union-attr]
        font, size, cmap = "", 0.0, None
        runs: list[TextRun] = []
        current = ""
        for match in _TEXT_OPS.finditer(objects[contents][1]):
            if match.group("font"):
                font, cmap = fonts[font_names[match.group("font")]]
                size = float(match.group("size"))
                continue
            if match.group("et"):
                if current:
                    runs.append(TextRun(font, size, current))
                current = ""
                continue
            if match.group("tj") is not None:
                raws = [_unescape(match.group("tj"))]
            else:
                raws = [_unescape(s) for s in _ARRAY_STRINGS.findall(match.group("tjarray"))]
            for raw in raws:
                if cmap is None:
                    current += raw.decode("latin-1")
                else:
                    codes = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
                    current += "".join(cmap.get(code, "\ufffd") for code in codes)
        pages.append(runs)
    return pages


def pdf_pages_text(data: bytes) -> list[str]:
    """The text of each page, one text run per line."""
    return ["\n".join(run.text for run in runs) for runs in pdf_runs(data)]


def pdf_text(data: bytes) -> str:
    return "\n".join(pdf_pages_text(data))


# --- documents ----------------------------------------------------------------------------

SELLER = Party(
    name="Reckon Labs GmbH",
    address_lines=("Hauptstraße 1", "10115 Berlin", "Germany"),
    tax_id="DE123456789",
    email="billing@reckon.example",
)
BUYER = Party(
    name="Zoë Müller & Søn AB",
    address_lines=("Storgatan 5", "111 22 Stockholm", "Sweden"),
    tax_id="SE556123456701",
    email="ap@zoe.example",
)
TIERS = (
    TierRow("Tier 1: 0 – 1,000 units", "1000", "0.010", "0", "10.000"),
    TierRow("Tier 2: 1,000 – 10,000 units", "9000.5", "0.008", "10.00", "82.004"),
)
LINES = (
    DocumentLine(
        description="Reasoning tokens (reasoner)",
        quantity="10,000,500 tokens",
        amount_minor=9200,
        tiers=TIERS,
        note="allowance: 1,000,000 tokens included",
    ),
    DocumentLine(
        description="Output tokens (reasoner)",
        quantity="1,234,567 tokens",
        amount_minor=123456,
    ),
    DocumentLine(
        description="Adjustment for 2026-10: late usage",
        quantity="1 adjustment",
        amount_minor=-1500,
        note="period 2026-10-01..2026-11-01",
    ),
)


def make_doc(**changes: object) -> InvoiceDocument:
    lines: tuple[DocumentLine, ...] = changes.pop("lines", LINES)  # type: ignore[assignment]
    taxes: tuple[TaxRow, ...] = changes.pop("taxes", (TaxRow("VAT", "0%", 0),))  # type: ignore[assignment]
    subtotal = sum(line.amount_minor for line in lines)
    doc = InvoiceDocument(
        title="Invoice",
        number="RK-2026-000042",
        status="finalized",
        issue_date=date(2026, 11, 1),
        due_date=date(2026, 11, 15),
        period_start=date(2026, 10, 1),
        period_end=date(2026, 11, 1),
        currency="USD",
        currency_exponent=2,
        seller=SELLER,
        buyer=BUYER,
        lines=lines,
        subtotal_minor=subtotal,
        taxes=taxes,
        total_minor=subtotal + sum(tax.amount_minor for tax in taxes),
        notes=("Usage cut-off: record 123456", "Plan: Reasoning Pro v3"),
    )
    return replace(doc, **changes)  # type: ignore[arg-type]


def many_lines(count: int) -> tuple[DocumentLine, ...]:
    return tuple(
        DocumentLine(f"Reasoning tokens, model {i:03d}", f"{i * 1000:,} tokens", i * 137)
        for i in range(1, count + 1)
    )


# --- format_money ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("minor", "currency", "exponent", "expected"),
    [
        (123456, "USD", 2, "USD 1,234.56"),
        (5, "USD", 2, "USD 0.05"),
        (100, "usd", 2, "USD 1.00"),
        (0, "USD", 2, "USD 0.00"),
        (-1200, "USD", 2, "-USD 12.00"),
        (-1, "USD", 2, "-USD 0.01"),
        (1235, "JPY", 0, "JPY 1,235"),
        (0, "JPY", 0, "JPY 0"),
        (-1235, "JPY", 0, "-JPY 1,235"),
        (1234567, "KWD", 3, "KWD 1,234.567"),
        (7, "KWD", 3, "KWD 0.007"),
        (-1000, "KWD", 3, "-KWD 1.000"),
        (123456789012345678901234, "USD", 2, "USD 1,234,567,890,123,456,789,012.34"),
        (10**30, "JPY", 0, "JPY 1,000,000,000,000,000,000,000,000,000,000"),
    ],
)
def test_format_money(minor: int, currency: str, exponent: int, expected: str) -> None:
    assert format_money(minor, currency, exponent) == expected


@pytest.mark.parametrize("bad", [1.5, "100", True])
def test_format_money_refuses_non_integer_minor_units(bad: object) -> None:
    with pytest.raises(TypeError):
        format_money(bad, "USD", 2)  # type: ignore[arg-type]


def test_format_money_refuses_negative_exponent() -> None:
    with pytest.raises(ValueError):
        format_money(100, "USD", -1)


# --- render_invoice_pdf ---------------------------------------------------------------------


def test_output_is_a_pdf() -> None:
    data = render_invoice_pdf(make_doc())
    assert isinstance(data, bytes)
    assert data.startswith(b"%PDF-")
    assert data.rstrip().endswith(b"%%EOF")
    assert b"/MediaBox [0 0 595.28 841.89]" in render_invoice_pdf(make_doc(), compress=False)


def test_renders_are_byte_identical() -> None:
    assert render_invoice_pdf(make_doc()) == render_invoice_pdf(make_doc())
    void = make_doc(status="void", issue_date=None, due_date=None)
    assert render_invoice_pdf(void) == render_invoice_pdf(void)


def test_renders_are_byte_identical_across_processes() -> None:
    # A stored invoice re-rendered later, in another worker, must give the same file.
    script = (
        "import hashlib, sys; from tests.billing.invoicing.test_pdf import make_doc, many_lines; "
        "from billing.invoicing.pdf import render_invoice_pdf; "
        "sys.stdout.write(hashlib.sha256(render_invoice_pdf(make_doc(lines=many_lines(60)))).hexdigest())"
    )
    root = Path(__file__).resolve().parents[3]
    elsewhere = subprocess.run(
        [sys.executable, "-c", script],
        cwd=root,
        env={**os.environ, "PYTHONHASHSEED": "12345"},  # another set/dict iteration order
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    here = hashlib.sha256(render_invoice_pdf(make_doc(lines=many_lines(60)))).hexdigest()
    assert elsewhere == here


def test_different_documents_give_different_bytes() -> None:
    assert render_invoice_pdf(make_doc()) != render_invoice_pdf(make_doc(number="RK-2026-000043"))


def test_billed_text_is_in_the_pdf() -> None:
    text = pdf_text(render_invoice_pdf(make_doc(), compress=False))
    expected = [
        "Invoice",
        "RK-2026-000042",
        "FINALIZED",
        "Reckon Labs GmbH",
        "DE123456789",
        "Storgatan 5",
        "ap@zoe.example",
        "2026-11-01",
        "2026-11-15",
        # the half-open period [2026-10-01, 2026-11-01) printed with its last day
        "2026-10-01 to 2026-10-31 (inclusive)",
        "Reasoning tokens (reasoner)",
        "10,000,500 tokens",
        "USD 92.00",
        "Output tokens (reasoner)",
        "USD 1,234.56",
        "Adjustment for 2026-10: late usage",
        "-USD 15.00",
        "allowance: 1,000,000 tokens included",
        "period 2026-10-01..2026-11-01",
        "Subtotal",
        "USD 1,311.56",
        "VAT (0%)",
        "USD 0.00",
        "Total USD",
        "Usage cut-off: record 123456",
        "Plan: Reasoning Pro v3",
        "Page 1/1",
    ]
    missing = [s for s in expected if s not in text]
    assert not missing, f"missing {missing} in:\n{text}"
    # Total is the last amount of the totals block.
    assert text.index("Total USD") < text.rindex("USD 1,311.56")


def test_tier_rows_are_printed_exactly() -> None:
    text = pdf_text(render_invoice_pdf(make_doc(), compress=False))
    for tier in TIERS:
        assert tier.label in text
        assert f"USD {tier.amount}" in text  # exact, not re-rounded
    assert "1000 × 0.010" in text
    assert "1000 × 0.010 +" not in text  # a zero flat fee is not printed
    assert "9000.5 × 0.008 + 10.00 flat" in text


def test_non_ascii_names_survive_with_the_unicode_font() -> None:
    if billing_pdf._dejavu_files() is None:
        pytest.skip("DejaVu Sans is not installed")
    buyer = replace(BUYER, name="Zoë Müller & Søn — Łódź 東京")
    text = pdf_text(render_invoice_pdf(make_doc(buyer=buyer), compress=False))
    # DejaVu has the Latin and Polish letters but no CJK: those print as "?".
    assert "Zoë Müller & Søn — Łódź ??" in text
    assert "Tier 1: 0 – 1,000 units" in text


def test_core_font_fallback_replaces_what_latin1_cannot_draw() -> None:
    buyer = replace(BUYER, name="Zoë Müller & Søn — Łódź 東京")
    data = render_invoice_pdf(make_doc(buyer=buyer), compress=False, use_system_font=False)
    assert b"DejaVu" not in data
    text = pdf_text(data)
    assert "Zoë Müller & Søn - ?ód? ??" in text
    assert "Tier 1: 0 - 1,000 units" in text  # en dash printed as its ASCII neighbour
    assert "RK-2026-000042" in text
    assert "USD 1,311.56" in text


def test_jpy_prints_no_decimals() -> None:
    lines = (
        DocumentLine("Reasoning tokens (reasoner)", "1,234,567 tokens", 1235),
        DocumentLine("Output tokens (reasoner)", "500 tokens", 99000),
    )
    doc = make_doc(currency="JPY", currency_exponent=0, lines=lines)
    text = pdf_text(render_invoice_pdf(doc, compress=False))
    assert "JPY 1,235" in text
    assert "JPY 99,000" in text
    assert "JPY 100,235" in text
    assert "JPY 0" in text
    assert re.search(r"JPY [\d,]+\.\d", text) is None


def test_kwd_prints_three_decimals() -> None:
    lines = (DocumentLine("Reasoning tokens (reasoner)", "1,000 tokens", 12345),)
    doc = make_doc(currency="KWD", currency_exponent=3, lines=lines)
    text = pdf_text(render_invoice_pdf(doc, compress=False))
    assert "KWD 12.345" in text
    assert "KWD 0.000" in text


def test_many_lines_break_pages_and_repeat_the_table_header() -> None:
    lines = many_lines(120)
    pages = pdf_pages_text(render_invoice_pdf(make_doc(lines=lines), compress=False))
    assert len(pages) > 1
    count = len(pages)
    assert f"Page 2/{count}" in pages[1]
    for number, page in enumerate(pages, start=1):
        assert f"Page {number}/{count}" in page
    # The table header is on every page that carries lines.
    for page in pages:
        if "Reasoning tokens, model" in page:
            assert "Description" in page and "Quantity" in page and "Amount" in page
    # Every line appears exactly once, in order, and the total is on the last page.
    text = "\n".join(pages)
    positions = [text.index(f"Reasoning tokens, model {i:03d}\n") for i in range(1, 121)]
    assert positions == sorted(positions)
    for line in lines:
        assert text.count(line.description + "\n") == 1
        assert format_money(line.amount_minor, "USD", 2) in text
    total = sum(line.amount_minor for line in lines)
    assert format_money(total, "USD", 2) in pages[-1]
    assert "RK-2026-000042" in pages[1]  # running header on continuation pages


def test_long_description_wraps_inside_its_column() -> None:
    words = " ".join(f"word{i:02d}" for i in range(60))
    lines = (DocumentLine(f"Reasoning tokens: {words}", "12 tokens", 100),)
    text = pdf_text(render_invoice_pdf(make_doc(lines=lines), compress=False))
    drawn = text.split("\n")
    # Wrapped: no drawn string holds the whole description, yet every word is there, once.
    assert all(words not in chunk for chunk in drawn)
    wrapped = [chunk for chunk in drawn if "word" in chunk]
    assert len(wrapped) >= 3
    assert " ".join(wrapped).split() == f"Reasoning tokens: {words}".split()
    assert "USD 1.00" in text


def test_void_carries_a_visible_marker() -> None:
    void = pdf_text(render_invoice_pdf(make_doc(status="void"), compress=False))
    assert void.count("VOID") >= 2  # watermark and status badge
    paid = pdf_text(render_invoice_pdf(make_doc(status="paid"), compress=False))
    assert "PAID" in paid
    assert "VOID" not in paid


def test_an_unissued_document_says_so() -> None:
    text = pdf_text(render_invoice_pdf(make_doc(issue_date=None), compress=False))
    assert "not issued" in text


def test_credit_note_prints_its_reference_and_negative_total() -> None:
    lines = (DocumentLine("Credit for RK-2026-000041: overbilled usage", "1 credit", -1200),)
    doc = make_doc(title="Credit note", number="RK-2026-000050", lines=lines)
    doc = replace(doc, reference="Corrects invoice RK-2026-000041")
    text = pdf_text(render_invoice_pdf(doc, compress=False))
    assert "Credit note" in text
    assert "Corrects invoice RK-2026-000041" in text
    assert text.count("-USD 12.00") >= 3  # line, subtotal, total


def test_renders_without_lines_notes_or_dates() -> None:
    doc = make_doc(lines=(), notes=(), due_date=None, taxes=())
    text = pdf_text(render_invoice_pdf(doc, compress=False))
    assert "No charges in this period." in text
    assert "USD 0.00" in text


def test_refuses_totals_that_do_not_add_up() -> None:
    with pytest.raises(ValueError, match="subtotal"):
        render_invoice_pdf(replace(make_doc(), subtotal_minor=1))
    with pytest.raises(ValueError, match="total"):
        render_invoice_pdf(replace(make_doc(), total_minor=1))
    with pytest.raises(ValueError, match="period"):
        render_invoice_pdf(make_doc(period_end=date(2026, 10, 1)))


def test_long_tier_breakdown_continues_on_the_next_page_in_tier_style() -> None:
    tiers = tuple(
        TierRow(f"Tier {i}: {i * 1000:,} – {(i + 1) * 1000:,} units", "1000", "0.001", "0", "1")
        for i in range(1, 91)
    )
    lines = (DocumentLine("Reasoning tokens (reasoner)", "90,000 units", 9000, tiers),)
    pages = pdf_runs(render_invoice_pdf(make_doc(lines=lines), compress=False))
    assert len(pages) >= 2
    texts = [run.text for run in pages[1]]
    assert texts[:4] == [
        "Invoice RK-2026-000042 (finalized) - continued",
        "Description",
        "Quantity",
        "Amount",
    ]
    first_tier = next(run for run in pages[1] if run.text.startswith("Tier "))
    # The row after the repeated table header keeps the small regular tier style.
    assert first_tier.size == 7.5
    assert "Bold" not in first_tier.font
    labels = [run.text for page in pages for run in page if run.text.startswith("Tier ")]
    assert labels == [tier.label for tier in tiers]


def test_long_buyer_name_is_cut_in_the_footer_but_whole_in_the_address_block() -> None:
    buyer = replace(BUYER, name="Very Long Customer Name " * 8)
    runs = pdf_runs(render_invoice_pdf(make_doc(buyer=buyer), compress=False))[0]
    footer = next(run.text for run in runs if run.text.startswith("Invoice RK-2026-000042 · "))
    assert footer.endswith(("…", "..."))  # "..." with the latin-1 core font
    assert len(footer) < len(buyer.name)
    texts = [run.text for run in runs]
    name_runs = texts[texts.index("BILL TO") + 1 : texts.index("Storgatan 5")]
    assert len(name_runs) > 1  # wrapped, not cut
    assert " ".join(name_runs).split() == buyer.name.split()


def test_huge_totals_are_printed_whole() -> None:
    lines = (DocumentLine("Reasoning tokens (reasoner)", "1 unit", 10**15 + 1),)
    text = pdf_text(render_invoice_pdf(make_doc(lines=lines), compress=False))
    assert text.count("USD 10,000,000,000,000.01") >= 2  # subtotal and total, never cut
