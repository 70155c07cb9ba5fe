"""`shared.pii_checks`: the checksums and rules each PII detector relies on."""

from __future__ import annotations

from shared.pii_checks import card_network, dni_ok, iban_ok, luhn_ok, nino_ok, ssn_ok


def test_checksums() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert card_network("4111111111111111") == "visa"
    assert card_network("9111111111111111") is None
    assert iban_ok("DE89370400440532013000") and not iban_ok("DE89370400440532013001")
    assert dni_ok("", "12345678", "Z") and not dni_ok("", "12345678", "A")
    assert dni_ok("X", "1234567", "L") and not dni_ok("X", "12345678", "L")


def test_ssn_and_nino_allocation_rules() -> None:
    assert ssn_ok("536", "22", "1234")
    assert not ssn_ok("666", "22", "1234") and not ssn_ok("912", "22", "1234")
    assert not ssn_ok("536", "00", "1234") and not ssn_ok("078", "05", "1120")
    assert nino_ok("AB") and not nino_ok("GB") and not nino_ok("DA") and not nino_ok("AO")
