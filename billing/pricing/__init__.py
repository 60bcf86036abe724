"""The pure pricing engine: no ORM, no I/O, no floats; frozen dataclasses in, Decimal out.

plan.py (what is priced, and which component covers an alias) · charges.py (the charge
models) · validate.py (plan errors and warnings) · rate.py (a period's usage against a
plan: the exact semantics) · currency.py (the one place money is rounded) · periods.py
(billing periods, half-open UTC) · proration.py (a plan over part of a period).
"""
