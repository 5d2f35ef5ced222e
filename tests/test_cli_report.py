"""``decomp report DIR``: prints what ``decomp decompose`` saved, fails in one line otherwise."""

from _cli_helpers import INPUT_SHAPE, TINY, run_cli


def test_prints_the_saved_report(capsys, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "decompose", "--model", TINY, "--method", "svd", "--rank", "0.5",
                           "--input-shape", INPUT_SHAPE, "--out", out, "--no-progress")
    assert code == 0, err
    code, stdout, _ = run_cli(capsys, "report", out)
    assert code == 0 and stdout == (out / "report.md").read_text()
    assert "| layer |" in stdout and "layers decomposed" in stdout


def test_a_folder_without_a_report_is_one_line_exit_2(capsys, tmp_path):
    for folder, says in ((tmp_path, "has no report.md"), (tmp_path / "absent", "does not exist")):
        code, stdout, err = run_cli(capsys, "report", folder)
        assert code == 2 and stdout == ""
        assert err.strip().splitlines() == [f"decomp report: error: argument DIR: {folder} {says}; "
                                            "allowed: a folder written by decomp decompose --out DIR"]
