"""Invoice and credit-note PDFs, rendered by one pure function.

``render_invoice_pdf(doc)`` turns an ``InvoiceDocument`` (plain frozen dataclasses: text,
dates and integer minor units) into PDF bytes. It knows nothing of Django, the database or
Stripe; the invoicing services build the document from a finalized invoice and store or
send the bytes.

Invariants:
- Money arrives already rounded (integer minor units, rounded once per line by the
  pricing engine) and is printed by ``format_money`` with exact integer arithmetic; tier
  amounts arrive as exact decimal text and are printed as given, never re-rounded.
- The arithmetic printed is the arithmetic billed: ``subtotal_minor`` must equal the sum
  of the lines and ``total_minor`` the subtotal plus the taxes, or rendering refuses
  (``ValueError``) rather than print an invoice that does not add up.
- Billing periods are half-open ``[start, end)``; the PDF prints the last day included
  (``end - 1 day``) and says "inclusive".
- The same document gives byte-identical PDFs on the same machine: the PDF creation date
  comes from the document (issue date, else the period end), never from the clock.
- Text uses DejaVu Sans when it is installed (found at known paths, then via
  ``fc-match``; nothing is downloaded), else the built-in Helvetica, which only covers
  latin-1. Characters the chosen font cannot draw are printed as "?".
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import cast

from fpdf import FPDF
from fpdf.enums import XPos, YPos
from fpdf.fonts import TTFFont

__all__ = [
    "DocumentLine",
    "InvoiceDocument",
    "Party",
    "TaxRow",
    "TierRow",
    "format_money",
    "render_invoice_pdf",
]


@dataclass(frozen=True)
class Party:
    """The seller or the buyer as printed on the document."""

    name: str
    address_lines: tuple[str, ...] = ()
    tax_id: str = ""
    email: str = ""


@dataclass(frozen=True)
class TierRow:
    """One tier of a graduated/volume price, exactly as rated (all values are text)."""

    label: str  # e.g. "Tier 2: 1,000 – 10,000 units"
    quantity: str  # exact decimal quantity in pricing units, e.g. "9000.5"
    unit_price: str  # exact price per pricing unit, e.g. "0.008"
    flat_fee: str  # exact flat fee of the tier in major units, e.g. "10.00" ("" or 0: none)
    amount: str  # exact, unrounded tier amount in major units, e.g. "72.004"


@dataclass(frozen=True)
class DocumentLine:
    """One invoice line: a usage charge, a fee or an adjustment."""

    description: str  # e.g. "Reasoning tokens (reasoner)"
    quantity: str  # human quantity with its unit, e.g. "1,234,567 tokens"
    amount_minor: int  # the line amount rounded once, in minor units (negative for credits)
    tiers: tuple[TierRow, ...] = ()  # how the amount was rated, printed beneath the line
    note: str = ""  # e.g. "allowance: 1,000,000 tokens included", printed in italics


@dataclass(frozen=True)
class TaxRow:
    """One tax on the subtotal; modelled and printed even while it is zero."""

    name: str  # e.g. "VAT"
    rate: str  # as printed, e.g. "0%"
    amount_minor: int  # tax amount in minor units


@dataclass(frozen=True)
class InvoiceDocument:
    """Everything printed on an invoice or credit note, and nothing else."""

    title: str  # "Invoice" or "Credit note"
    number: str  # "RK-2026-000042"
    status: str  # finalized | paid | void | uncollectible
    issue_date: date | None  # None when not issued (printed "not issued")
    due_date: date | None  # None when no payment is due
    period_start: date  # first day of the half-open billing period [start, end)
    period_end: date  # exclusive end of the period; printed as end - 1 day, "inclusive"
    currency: str  # ISO 4217 code, e.g. "USD"
    currency_exponent: int  # digits of the minor unit: USD 2, JPY 0, KWD 3
    seller: Party
    buyer: Party
    lines: tuple[DocumentLine, ...]
    subtotal_minor: int  # sum of the lines' amount_minor
    taxes: tuple[TaxRow, ...]
    total_minor: int  # subtotal_minor plus every tax's amount_minor
    notes: tuple[str, ...] = ()  # e.g. "Usage cut-off: record 123456", "Plan: Reasoning Pro v3"
    reference: str = ""  # e.g. the number of the invoice a credit note corrects


def format_money(minor: int, currency: str, exponent: int) -> str:
    """``minor`` units as "USD 1,234.56", "JPY 1,235" or "-USD 12.00"; exact, no float."""
    if isinstance(minor, bool) or not isinstance(minor, int):
        raise TypeError(f"minor units must be int, got {type(minor).__name__}")
    if isinstance(exponent, bool) or not isinstance(exponent, int) or exponent < 0:
        raise ValueError(f"currency exponent must be a non-negative int, got {exponent!r}")
    sign = "-" if minor < 0 else ""
    major, fraction = divmod(abs(minor), 10**exponent)
    body = f"{major:,}"
    if exponent:
        body = f"{body}.{fraction:0{exponent}d}"
    return f"{sign}{currency.upper()} {body}"


# --- fonts -----------------------------------------------------------------------------

_DEJAVU_FILES = {
    "": "DejaVuSans.ttf",
    "B": "DejaVuSans-Bold.ttf",
    "I": "DejaVuSans-Oblique.ttf",
    "BI": "DejaVuSans-BoldOblique.ttf",
}
# Where distributions install DejaVu; fc-match is asked only when none of these has it.
_DEJAVU_DIRS = (
    "/usr/share/fonts/truetype/dejavu",
    "/usr/share/fonts/dejavu",
    "/usr/share/fonts/dejavu-sans-fonts",
    "/usr/share/fonts/TTF",
    "/usr/share/fonts/truetype/ttf-dejavu",
    "/usr/local/share/fonts",
    "/usr/local/share/fonts/dejavu",
    "/opt/homebrew/share/fonts",
    "/Library/Fonts",
)
_UNICODE_FAMILY = "DejaVu"
_CORE_FAMILY = "helvetica"


def _fc_match_dejavu_dir() -> Path | None:
    fc_match = shutil.which("fc-match")
    if fc_match is None:
        return None
    try:
        found = subprocess.run(
            [fc_match, "--format=%{file}", "DejaVu Sans:style=Book"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    # fc-match always answers with *some* font; only a real DejaVu Sans will do.
    path = Path(found)
    return path.parent if path.name == _DEJAVU_FILES[""] else None


@functools.lru_cache(maxsize=1)
def _dejavu_files() -> dict[str, Path] | None:
    """DejaVu Sans files per fpdf style, or None; a missing style reuses the regular face."""
    directories = [Path(d) for d in _DEJAVU_DIRS]
    for directory in directories:
        if (directory / _DEJAVU_FILES[""]).is_file():
            break
    else:
        fc_dir = _fc_match_dejavu_dir()
        directories = [fc_dir] if fc_dir is not None else []
    for directory in directories:
        regular = directory / _DEJAVU_FILES[""]
        if regular.is_file():
            return {
                style: (directory / name if (directory / name).is_file() else regular)
                for style, name in _DEJAVU_FILES.items()
            }
    return None


# Core fonts only cover latin-1: print common typography as its nearest ASCII.
_LATIN1_FALLBACKS = str.maketrans(
    {
        "\u2010": "-",
        "\u2011": "-",
        "\u2012": "-",
        "\u2013": "-",
        "\u2014": "-",
        "\u2212": "-",
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": ",",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u2026": "...",
        "\u2022": "*",
        "\u20ac": "EUR",
        "\u2264": "<=",
        "\u2265": ">=",
        "\u2192": "->",
        "\u2009": " ",
        "\u202f": " ",
    }
)


# --- layout constants (millimetres, points, RGB) ----------------------------------------

_MARGIN = 15.0
_BOTTOM_MARGIN = 18.0
_DESC_W = 112.0
_QTY_W = 34.0
_AMOUNT_W = 34.0
_TIER_INDENT = 6.0
_TIER_MATH_W = 62.0
_BODY_PT = 9.0
_SMALL_PT = 7.5
_BODY_LH = 4.6
_SMALL_LH = 3.8
_INK = (33, 37, 41)
_MUTED = (108, 117, 125)
_RULE = (206, 212, 218)
_HEADER_FILL = (233, 236, 239)
_WATERMARK = (236, 236, 236)
_STATUS_COLOURS = {
    "finalized": (13, 110, 253),
    "paid": (25, 135, 84),
    "void": (200, 35, 51),
    "uncollectible": (130, 30, 40),
}
# Statuses whose every page carries a large diagonal marker.
_WATERMARKED = frozenset({"void"})

# A cell of a table row: x offset from the left margin, width, text, alignment.
_Cell = tuple[float, float, str, str]


class _InvoicePDF(FPDF):
    """FPDF with the invoice's running header, footer and font handling."""

    def __init__(self, doc: InvoiceDocument, *, use_system_font: bool) -> None:
        super().__init__(orientation="portrait", unit="mm", format="A4")
        self.doc = doc
        self.set_margins(_MARGIN, _MARGIN, _MARGIN)
        self.set_auto_page_break(auto=True, margin=_BOTTOM_MARGIN)
        self.family = _CORE_FAMILY
        self.charset: frozenset[int] | None = None  # None: latin-1 core font
        files = _dejavu_files() if use_system_font else None
        if files is not None:
            for style, path in files.items():
                self.add_font(_UNICODE_FAMILY, style, str(path))
            self.family = _UNICODE_FAMILY
            self.charset = frozenset.intersection(
                *(frozenset(font.cmap) for font in self.fonts.values() if isinstance(font, TTFFont))
            )

    # -- text --------------------------------------------------------------------------

    def clean(self, text: str) -> str:
        """``text`` reduced to what the current font can draw; the rest becomes "?"."""
        text = unicodedata.normalize("NFC", text).replace("\r\n", "\n")
        text = "".join(
            " " if unicodedata.category(ch) == "Cc" and ch != "\n" else ch for ch in text
        )
        if self.charset is None:
            text = text.translate(_LATIN1_FALLBACKS)
            return text.encode("latin-1", errors="replace").decode("latin-1")
        charset = self.charset
        return "".join(ch if ch == "\n" or ord(ch) in charset else "?" for ch in text)

    def fit(self, text: str, width: float) -> str:
        """``text`` cut to one line of ``width`` with an ellipsis (for single-line cells)."""
        text = self.clean(text)
        room = width - 2 * self.c_margin
        if self.get_string_width(text) <= room:
            return text
        ellipsis = self.clean("…")
        while text and self.get_string_width(text + ellipsis) > room:
            text = text[:-1]
        return text + ellipsis

    def use(
        self, style: str = "", size: float = _BODY_PT, colour: tuple[int, int, int] = _INK
    ) -> None:
        self.set_font(self.family, style, size)
        self.set_text_color(*colour)

    def text_height(self, width: float, text: str, line_height: float) -> float:
        # output="LINES" makes multi_cell return the wrapped lines (its type is a union).
        lines = cast(
            "list[str]",
            self.multi_cell(
                width, line_height, self.clean(text), dry_run=True, output="LINES", padding=0
            ),
        )
        return max(1, len(lines)) * line_height

    def block(
        self, x: float, y: float, width: float, text: str, line_height: float, align: str = "L"
    ) -> float:
        """Wrapped ``text`` at (x, y); returns the y below it."""
        self.set_xy(x, y)
        self.multi_cell(
            width,
            line_height,
            self.clean(text),
            align=align,
            new_x=XPos.LMARGIN,
            new_y=YPos.NEXT,
        )
        return self.get_y()

    # -- page furniture ----------------------------------------------------------------

    def header(self) -> None:
        doc = self.doc
        status = doc.status.lower()
        if status in _WATERMARKED:
            self.use("B", 110, _WATERMARK)
            marker = status.upper()
            centre_x, centre_y = self.w / 2, self.h / 2
            with self.rotation(angle=45, x=centre_x, y=centre_y):
                width = self.get_string_width(marker)
                self.text(centre_x - width / 2, centre_y + 14, marker)
        if self.page_no() > 1:
            self.use("", _SMALL_PT, _MUTED)
            self.set_xy(self.l_margin, 8)
            running = f"{doc.title} {doc.number} ({status}) - continued"
            self.cell(self.epw, 4, self.fit(running, self.epw), align="R")
            self.set_y(self.t_margin)

    def footer(self) -> None:
        doc = self.doc
        self.set_y(-12)
        self.use("", _SMALL_PT, _MUTED)
        left = f"{doc.title} {doc.number} · {doc.buyer.name}"
        self.cell(self.epw - 30, 4, self.fit(left, self.epw - 30), align="L")
        self.cell(30, 4, f"Page {self.page_no()}/{self.str_alias_nb_pages}", align="R")


# --- sections ----------------------------------------------------------------------------


def _period_text(start: date, end: date) -> str:
    last = end - timedelta(days=1)
    return f"{start.isoformat()} to {last.isoformat()} (inclusive)"


def _money(doc: InvoiceDocument, minor: int) -> str:
    return format_money(minor, doc.currency, doc.currency_exponent)


def _is_zero(text: str) -> bool:
    try:
        return not text.strip() or Decimal(text.replace(",", "")) == 0
    except InvalidOperation:
        return False


def _tier_math(doc: InvoiceDocument, tier: TierRow) -> str:
    math = f"{tier.quantity} × {tier.unit_price}"
    if not _is_zero(tier.flat_fee):
        math += f" + {tier.flat_fee} flat"
    return math


def _draw_title(pdf: _InvoicePDF, doc: InvoiceDocument) -> None:
    top = pdf.get_y()
    pdf.use("B", 22)
    pdf.set_xy(pdf.l_margin, top)
    pdf.cell(130, 10, pdf.fit(doc.title, 130), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.use("", 11, _MUTED)
    pdf.cell(130, 6, pdf.fit(f"No. {doc.number}", 130), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    below_title = pdf.get_y()

    # Status badge, top right: coloured frame with the status in capitals.
    status = doc.status.lower()
    colour = _STATUS_COLOURS.get(status, _MUTED)
    pdf.use("B", 12, colour)
    label = pdf.clean(doc.status.upper())
    badge_w = pdf.get_string_width(label) + 8
    pdf.set_draw_color(*colour)
    pdf.set_line_width(0.6)
    pdf.set_xy(pdf.w - pdf.r_margin - badge_w, top + 1)
    pdf.cell(badge_w, 9, label, border=1, align="C")
    pdf.set_line_width(0.2)
    pdf.set_y(below_title + 4)


def _party_lines(party: Party) -> list[str]:
    lines = list(party.address_lines)
    if party.tax_id:
        lines.append(f"Tax ID: {party.tax_id}")
    if party.email:
        lines.append(party.email)
    return lines


def _draw_parties(pdf: _InvoicePDF, doc: InvoiceDocument) -> None:
    column_w = (pdf.epw - 10) / 2
    top = pdf.get_y()
    bottoms = []
    for index, (heading, party) in enumerate((("From", doc.seller), ("Bill to", doc.buyer))):
        x = pdf.l_margin + index * (column_w + 10)
        pdf.use("B", _SMALL_PT, _MUTED)
        y = pdf.block(x, top, column_w, heading.upper(), 4)
        pdf.use("B", 10.5)
        y = pdf.block(x, y + 0.5, column_w, party.name, 5)
        pdf.use("", _BODY_PT)
        for line in _party_lines(party):
            y = pdf.block(x, y, column_w, line, _BODY_LH)
        bottoms.append(y)
    pdf.set_y(max(bottoms) + 5)


def _draw_dates(pdf: _InvoicePDF, doc: InvoiceDocument) -> None:
    fields = [
        ("Issue date", doc.issue_date.isoformat() if doc.issue_date else "not issued"),
        ("Due date", doc.due_date.isoformat() if doc.due_date else "—"),
        ("Service period", _period_text(doc.period_start, doc.period_end)),
        ("Currency", doc.currency.upper()),
    ]
    widths = [32.0, 32.0, 84.0, 32.0]
    top = pdf.get_y()
    pdf.set_draw_color(*_RULE)
    pdf.line(pdf.l_margin, top, pdf.l_margin + pdf.epw, top)
    x = pdf.l_margin
    bottoms = []
    for (label, value), width in zip(fields, widths, strict=True):
        pdf.use("B", _SMALL_PT, _MUTED)
        y = pdf.block(x, top + 2, width, label.upper(), 4)
        pdf.use("", _BODY_PT)
        bottoms.append(pdf.block(x, y + 0.5, width, value, _BODY_LH))
        x += width
    bottom = max(bottoms) + 2
    pdf.line(pdf.l_margin, bottom, pdf.l_margin + pdf.epw, bottom)
    pdf.set_y(bottom + 2)
    if doc.reference:
        pdf.use("", _BODY_PT)
        pdf.set_y(pdf.block(pdf.l_margin, pdf.get_y(), pdf.epw, f"Reference: {doc.reference}", 5))
    pdf.set_y(pdf.get_y() + 4)


def _draw_table_header(pdf: _InvoicePDF) -> None:
    pdf.use("B", _BODY_PT)
    pdf.set_fill_color(*_HEADER_FILL)
    pdf.set_x(pdf.l_margin)
    pdf.cell(_DESC_W, 7, "Description", fill=True)
    pdf.cell(_QTY_W, 7, "Quantity", fill=True, align="R")
    pdf.cell(_AMOUNT_W, 7, "Amount", fill=True, align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_y(pdf.get_y() + 1)


def _row_height(pdf: _InvoicePDF, cells: Sequence[_Cell], line_height: float) -> float:
    return max(pdf.text_height(width, text, line_height) for _, width, text, _ in cells)


def _draw_row(
    pdf: _InvoicePDF,
    cells: Sequence[_Cell],
    line_height: float,
    *,
    style: str = "",
    size: float = _BODY_PT,
    colour: tuple[int, int, int] = _INK,
    repeat_header: bool,
) -> None:
    """One table row whose cells wrap independently; breaks the page before, never inside."""
    pdf.use(style, size, colour)
    height = _row_height(pdf, cells, line_height)
    if pdf.will_page_break(height):
        pdf.add_page()
        if repeat_header:
            _draw_table_header(pdf)
        pdf.use(style, size, colour)
    top = pdf.get_y()
    bottom = top
    for offset, width, text, align in cells:
        bottom = max(bottom, pdf.block(pdf.l_margin + offset, top, width, text, line_height, align))
    pdf.set_y(max(bottom, top + height))


def _line_rows(
    pdf: _InvoicePDF, doc: InvoiceDocument, line: DocumentLine
) -> list[tuple[str, float, float, list[_Cell]]]:
    """The rows of one invoice line: (style, size, line height, cells)."""
    rows: list[tuple[str, float, float, list[_Cell]]] = [
        (
            "",
            _BODY_PT,
            _BODY_LH,
            [
                (0, _DESC_W, line.description, "L"),
                (_DESC_W, _QTY_W, line.quantity, "R"),
                (_DESC_W + _QTY_W, _AMOUNT_W, _money(doc, line.amount_minor), "R"),
            ],
        )
    ]
    if line.note:
        rows.append(("I", 8.0, 4.0, [(_TIER_INDENT, _DESC_W - _TIER_INDENT, line.note, "L")]))
    label_w = pdf.epw - _TIER_INDENT - _TIER_MATH_W - _AMOUNT_W
    for tier in line.tiers:
        rows.append(
            (
                "",
                _SMALL_PT,
                _SMALL_LH,
                [
                    (_TIER_INDENT, label_w, tier.label, "L"),
                    (_TIER_INDENT + label_w, _TIER_MATH_W, _tier_math(doc, tier), "R"),
                    (
                        _DESC_W + _QTY_W,
                        _AMOUNT_W,
                        f"{doc.currency.upper()} {tier.amount}",
                        "R",
                    ),
                ],
            )
        )
    return rows


def _draw_lines(pdf: _InvoicePDF, doc: InvoiceDocument) -> None:
    _draw_table_header(pdf)
    for line in doc.lines:
        rows = _line_rows(pdf, doc, line)
        heights = []
        for style, size, line_height, cells in rows:
            pdf.use(style, size)
            heights.append(_row_height(pdf, cells, line_height))
        # Keep a line with its note and tiers when they fit on one page.
        block_h = sum(heights) + 2
        if pdf.will_page_break(block_h) and block_h < pdf.eph / 2:
            pdf.add_page()
            _draw_table_header(pdf)
        for style, size, line_height, cells in rows:
            colour = _INK if (style, size) == ("", _BODY_PT) else _MUTED
            _draw_row(
                pdf, cells, line_height, style=style, size=size, colour=colour, repeat_header=True
            )
        y = pdf.get_y() + 1
        pdf.set_draw_color(*_RULE)
        pdf.line(pdf.l_margin, y, pdf.l_margin + pdf.epw, y)
        pdf.set_y(y + 1)
    if not doc.lines:
        pdf.use("I", _BODY_PT, _MUTED)
        _draw_row(
            pdf, [(0, pdf.epw, "No charges in this period.", "L")], _BODY_LH, repeat_header=True
        )


def _draw_totals(pdf: _InvoicePDF, doc: InvoiceDocument) -> None:
    rows = [("Subtotal", _money(doc, doc.subtotal_minor))]
    rows += [(f"{tax.name} ({tax.rate})", _money(doc, tax.amount_minor)) for tax in doc.taxes]
    total_label = f"Total {doc.currency.upper()}"
    total = _money(doc, doc.total_minor)
    # Money is never cut: the amount column widens for very large totals.
    pdf.use("B", 11)
    amount_w = max(_AMOUNT_W, pdf.get_string_width(total) + 2 * pdf.c_margin + 1)
    label_w = 50.0
    right = pdf.l_margin + pdf.epw
    x = right - label_w - amount_w
    if pdf.will_page_break((len(rows) + 1) * 6 + 6):
        pdf.add_page()
    pdf.set_y(pdf.get_y() + 3)
    pdf.use("", _BODY_PT)
    for label, amount in rows:
        pdf.set_x(x)
        pdf.cell(label_w, 6, pdf.fit(label, label_w))
        pdf.cell(amount_w, 6, amount, align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    y = pdf.get_y() + 0.5
    pdf.set_draw_color(*_INK)
    pdf.line(x, y, right, y)
    pdf.set_y(y + 1)
    pdf.use("B", 11)
    pdf.set_x(x)
    pdf.cell(label_w, 7, total_label)
    pdf.cell(amount_w, 7, total, align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def _draw_notes(pdf: _InvoicePDF, doc: InvoiceDocument) -> None:
    if not doc.notes:
        return
    pdf.use("B", _SMALL_PT, _MUTED)
    if pdf.will_page_break(14):
        pdf.add_page()
    pdf.set_y(pdf.get_y() + 8)
    pdf.set_y(pdf.block(pdf.l_margin, pdf.get_y(), pdf.epw, "NOTES", 4) + 0.5)
    for note in doc.notes:
        _draw_row(pdf, [(0, pdf.epw, note, "L")], 4.2, size=8, repeat_header=False)


def _check_arithmetic(doc: InvoiceDocument) -> None:
    lines_sum = sum(line.amount_minor for line in doc.lines)
    if doc.subtotal_minor != lines_sum:
        raise ValueError(
            f"subtotal_minor {doc.subtotal_minor} is not the sum of the lines ({lines_sum})"
        )
    expected_total = doc.subtotal_minor + sum(tax.amount_minor for tax in doc.taxes)
    if doc.total_minor != expected_total:
        raise ValueError(
            f"total_minor {doc.total_minor} is not subtotal plus taxes ({expected_total})"
        )
    if doc.period_end <= doc.period_start:
        raise ValueError(f"empty period [{doc.period_start}, {doc.period_end})")


def render_invoice_pdf(
    doc: InvoiceDocument, *, compress: bool = True, use_system_font: bool = True
) -> bytes:
    """The document as A4 PDF bytes; identical input gives identical bytes.

    ``compress=False`` leaves the page streams readable (tests search them);
    ``use_system_font=False`` forces the latin-1 core font even when DejaVu is installed.
    """
    _check_arithmetic(doc)
    format_money(0, doc.currency, doc.currency_exponent)  # validates the exponent early
    pdf = _InvoicePDF(doc, use_system_font=use_system_font)
    pdf.compress = compress
    stamp = doc.issue_date or doc.period_end
    pdf.set_creation_date(datetime(stamp.year, stamp.month, stamp.day, tzinfo=UTC))
    pdf.set_title(f"{doc.title} {doc.number}")
    pdf.set_author(doc.seller.name)
    pdf.set_subject(f"{doc.title} for {doc.buyer.name}")
    pdf.set_creator("Reckon")
    pdf.set_lang("en")
    pdf.add_page()
    _draw_title(pdf, doc)
    _draw_parties(pdf, doc)
    _draw_dates(pdf, doc)
    _draw_lines(pdf, doc)
    _draw_totals(pdf, doc)
    _draw_notes(pdf, doc)
    return bytes(pdf.output())
