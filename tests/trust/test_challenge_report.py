"""The challenge report: who attests what, who agrees, who differs."""

from __future__ import annotations

import io

from p2pcache.cli.challenge import print_report, print_summary
from p2pcache.trust.challenge_report import LocalCopy, challenge_report
from p2pcache.trust.policy import Refusal, Statement
from tests.trust.builders import EVIL_HASH, ITEM, NAR_HASH, REFS, Builder


def statements(builders, **changes):
    return [Statement(b.trusted, b.attestation(**changes).attestation, True) for b in builders]


def test_all_agree(tmp_path):
    alpha, beta = Builder(tmp_path, "alpha"), Builder(tmp_path, "beta")
    report = challenge_report(ITEM, [alpha.trusted, beta.trusted], statements([alpha, beta]))
    assert report["verdict"] == "agree" and not report["conflict"]
    assert report["attested_by"] == 2
    out = io.StringIO()
    print_report(report, out=out)
    assert "2 trusted builder(s) agree" in out.getvalue()


def test_a_different_nar_hash_is_a_conflict(tmp_path):
    alpha, beta = Builder(tmp_path, "alpha"), Builder(tmp_path, "beta")
    said = statements([alpha]) + statements([beta], nar_hash=EVIL_HASH)
    report = challenge_report(ITEM, [alpha.trusted, beta.trusted], said)
    assert report["verdict"] == "conflict"
    out = io.StringIO()
    print_report(report, out=out)
    print_summary([report], out=out)
    assert "contents differ" in out.getvalue() and "1 (100%) contents differ" in out.getvalue()


def test_other_references_or_chunk_root_are_a_conflict_too(tmp_path):
    alpha, beta = Builder(tmp_path, "alpha"), Builder(tmp_path, "beta")
    trusted = [alpha.trusted, beta.trusted]
    refs = statements([alpha]) + statements([beta], references=REFS[:1])
    assert challenge_report(ITEM, trusted, refs)["conflict"]
    root = statements([alpha]) + statements([beta], chunk_root=bytes(32))
    assert challenge_report(ITEM, trusted, root)["conflict"]


def test_the_local_copy_is_compared(tmp_path):
    alpha = Builder(tmp_path, "alpha")
    same = LocalCopy(NAR_HASH, 4242, REFS, "store")
    assert not challenge_report(ITEM, [alpha.trusted], statements([alpha]), (), same)["conflict"]
    other = LocalCopy(EVIL_HASH, 4242, REFS, "peer")
    assert challenge_report(ITEM, [alpha.trusted], statements([alpha]), (), other)["conflict"]


def test_builders_without_attestation_and_refusals_are_listed(tmp_path):
    alpha, beta = Builder(tmp_path, "alpha"), Builder(tmp_path, "beta")
    refusals = [Refusal("bad-signature", "forged", beta.public), Refusal("oversized", "big")]
    report = challenge_report(ITEM, [alpha.trusted, beta.trusted], [], refusals)
    assert report["verdict"] == "no-attestation" and not report["conflict"]
    assert report["builders"][1]["refused"][0]["reason"] == "bad-signature"
    assert report["untrusted"] == [{"reason": "oversized", "detail": "big"}]
    out = io.StringIO()
    print_report(report, out=out, verbose=True)
    assert "refused: bad-signature" in out.getvalue()
