"""The TLS bootstrap's decisions (kube_ip_tracker.server.bootstrap_pki.plan) over a simulated clock."""

from __future__ import annotations

import datetime

import pytest

from kube_ip_tracker.server import bootstrap_pki as pki

NAMES = ["kube-ip-tracker", "kube-ip-tracker.ns", "kube-ip-tracker.ns.svc", "kube-ip-tracker.ns.svc.cluster.local"]
LIFE = pki.Lifetimes(cert=datetime.timedelta(days=30), ca=datetime.timedelta(days=600))
T0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)


def step(data: dict[str, bytes], days: float, names: list[str] = NAMES) -> tuple[pki.Pki, list[str]]:
    now = T0 + datetime.timedelta(days=days)
    return pki.plan(pki.parse(data, names, now), names, LIFE, "test CA", now)


def test_a_new_secret_gets_a_ca_and_a_certificate_for_the_names_that_then_stays() -> None:
    made, reasons = step({}, 0)
    assert reasons == ["no CA yet: created one"]
    assert pki.dns_names(made.serving.cert) == set(NAMES)
    made.serving.cert.verify_directly_issued_by(made.ca.cert)
    assert made.bundle() == made.ca.cert_pem
    again, reasons = step(made.secret_data(), 10)
    assert reasons == [] and again.serving.cert == made.serving.cert


def test_the_certificate_is_renewed_with_a_third_left_from_the_same_ca() -> None:
    made, _ = step({}, 0)
    _, reasons = step(made.secret_data(), 19.9)
    assert reasons == []
    renewed, reasons = step(made.secret_data(), 20.1)
    assert [r for r in reasons if "reissued" in r] and renewed.ca.cert == made.ca.cert
    assert renewed.serving.cert.serial_number != made.serving.cert.serial_number
    assert renewed.serving.cert.not_valid_after_utc > made.serving.cert.not_valid_after_utc


def test_other_names_or_a_mismatched_key_are_reissued_and_garbage_ca_is_an_error() -> None:
    made, _ = step({}, 0)
    wider, reasons = step(made.secret_data(), 1, names=[*NAMES, "hub.example.com"])
    assert any("serving certificate is for" in r and "reissued" in r for r in reasons)
    # A replica still configured without the new name keeps the wider certificate (no flip-flop).
    _, reasons = step(wider.secret_data(), 1)
    assert reasons == []
    other, _ = step({}, 0)
    data = {**made.secret_data(), "tls.key": other.serving.key_pem}
    _, reasons = step(data, 1)
    assert reasons == ["serving certificate tls.key does not match the certificate in tls.crt: reissued"]
    with pytest.raises(pki.PkiError, match=r"ca\.key does not match the certificate in ca\.crt"):
        step({**made.secret_data(), "ca.key": other.ca.key_pem}, 1)
    with pytest.raises(pki.PkiError, match=r"ca\.crt is not a CA certificate"):
        step({**made.secret_data(), "ca.crt": made.serving.cert_pem, "ca.key": made.serving.key_pem}, 1)


def test_ca_rotation_publishes_the_next_ca_first_then_switches_then_drops_the_old_one() -> None:
    data = step({}, 0)[0].secret_data()
    states = []
    for day in range(0, 1300, 5):
        current, reasons = step(data, day)
        if reasons:
            states.append((day, len(pki.x509.load_pem_x509_certificates(current.bundle())), reasons))
        data = current.secret_data()
        # Never a serving certificate that the published bundle does not verify.
        assert any(
            current.serving.cert.issuer == c.subject for c in pki.x509.load_pem_x509_certificates(current.bundle())
        )
    events = [
        (day, size, r.split(":")[-1].strip()) for day, size, rs in states for r in rs if not r.startswith("serving")
    ]
    # The first CA expires on day 600 (V): next CA when less than V/3 is left, switch when less than
    # V/6 is left (it has been published for V/6 by then), the old CA leaves the bundle on expiry.
    # The second CA (made on day 405, valid until 1005) goes the same way.
    assert events[:5] == [
        (405, 2, "next CA created and added to the bundle"),
        (505, 2, "next CA now signs; the old one stays in the bundle until it expires"),
        (600, 1, "removed from the bundle"),
        (810, 2, "next CA created and added to the bundle"),
        (910, 2, "next CA now signs; the old one stays in the bundle until it expires"),
    ], events
