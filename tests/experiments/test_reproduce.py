"""reproduce: the logs' header, which figures run, and where a log's commit comes from."""

from __future__ import annotations

import pytest
import torch

from experiments import reproduce


def test_a_figure_log_starts_with_its_header_and_holds_the_output(tmp_path, monkeypatch) -> None:
    # a stand-in benchmark: `python -m platform` prints one line and exits 0
    monkeypatch.setitem(reproduce.FIGURES, "stand_in", reproduce.Figure("platform", (), "p.txt"))
    log = reproduce.run_figure("stand_in", results=tmp_path)
    lines = log.read_text().splitlines()
    assert log == tmp_path / "p.txt"
    assert lines[0] == "# command: python -m platform"
    assert [line.split(":")[0] for line in lines[1:6]] == [
        "# date", "# commit", "# machine", "# versions", "# wall"
    ]  # fmt: skip
    assert "exit status 0" in lines[5]
    assert f"torch {torch.__version__}" in lines[4]
    assert len(lines) > 6 and lines[6].strip()  # what the benchmark printed


def test_a_sent_commit_names_the_copy(monkeypatch) -> None:
    monkeypatch.setenv("IKKUNA_SENT_COMMIT", "abc1234")
    header = reproduce.log_header("python -m x").splitlines()
    assert header[2] == "# commit: abc1234 (as its sender named the copy of the tree)"
    monkeypatch.delenv("IKKUNA_SENT_COMMIT")
    commit = reproduce.log_header("python -m x").splitlines()[2]
    assert "as its sender named" not in commit and commit.startswith("# commit: ")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without CUDA does")
def test_gpu_figures_are_skipped_without_cuda(tmp_path, capsys) -> None:
    assert reproduce.main(["--gpu", "--results", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.splitlines()
    gpu = [name for name, figure in reproduce.FIGURES.items() if figure.gpu]
    assert len(gpu) >= 8
    assert printed == [f"{name}: skipped (no CUDA here)" for name in gpu]
    assert not list(tmp_path.iterdir())


def test_only_and_gpu_exclude_each_other() -> None:
    with pytest.raises(SystemExit):
        reproduce.main(["--gpu", "--only", "faults"])
