"""Finding the daemon's build log of a derivation: Guix's names, in Guix's order."""

import pytest

from p2pcache.testing.build_logs import write_build_log
from p2pcache.trust.build_log import build_log_candidates, find_build_log

DRV = "61564s2my4b5nyqadlfc2x77902186fi-glibc-2.41.drv"


def test_candidates_are_the_paths_guix_looks_at_in_its_order(tmp_path):
    folder = tmp_path / "drvs" / "61"
    assert build_log_candidates(tmp_path, DRV) == [
        folder / "564s2my4b5nyqadlfc2x77902186fi-glibc-2.41.drv.gz",
        folder / "564s2my4b5nyqadlfc2x77902186fi-glibc-2.41.drv.bz2",
        folder / "564s2my4b5nyqadlfc2x77902186fi-glibc-2.41.drv",
    ]


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ""])
def test_a_log_in_any_form_guix_writes_is_found(tmp_path, suffix):
    assert find_build_log(tmp_path, DRV) is None
    written = write_build_log(tmp_path, "/gnu/store/" + DRV, suffix=suffix)
    assert find_build_log(tmp_path, DRV) == written
    assert written.name.endswith(".drv" + suffix)


def test_a_directory_in_place_of_the_log_is_not_a_log(tmp_path):
    for candidate in build_log_candidates(tmp_path, DRV):
        candidate.mkdir(parents=True)
    assert find_build_log(tmp_path, DRV) is None


def test_another_derivations_log_does_not_count(tmp_path):
    write_build_log(tmp_path, "61564s2my4b5nyqadlfc2x77902186fi-glibc-2.40.drv")
    assert find_build_log(tmp_path, DRV) is None


@pytest.mark.parametrize("bad", ["", "ab", "../../etc/passwd.drv", ".hidden.drv"])
def test_a_name_that_is_not_a_basename_is_refused(tmp_path, bad):
    with pytest.raises(ValueError):
        build_log_candidates(tmp_path, bad)
