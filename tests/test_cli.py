"""The `icam` command line: training, multi-process DDP, and errors a new user meets."""


from typer.testing import CliRunner

from icam.cli import app

from .conftest import TINY

runner = CliRunner()


def sets(*items):
    return [arg for item in items for arg in ("--set", item)]


def test_the_command_list_shows_each_commands_summary_only():
    """`icam --help` lists every command by its docstring's first paragraph: a command's
    examples and details belong to its own --help."""
    import typer.main

    commands = typer.main.get_command(app).commands
    assert {"train", "explain", "data"} <= set(commands)
    for name, command in commands.items():
        summary = command.get_short_help_str(limit=10_000)
        assert "Example:" not in summary, name
        assert (command.help or "").split("\n\n")[0].split() == summary.split(), name


def test_train_prints_validation_and_the_run_folder(tmp_path):
    tmp_path = tmp_path / "study #2: runs"  # flags are taken as they are, not read as YAML
    result = runner.invoke(app, ["train", "-q", "--out", str(tmp_path), "--name", "r", *sets(*TINY)])
    assert result.exit_code == 0, result.output
    assert "validation: accuracy" in result.stdout
    assert f"run folder: {tmp_path / 'r'}" in result.stdout
    assert (tmp_path / "r" / "checkpoints" / "last.pt").is_file()

    again = runner.invoke(app, ["train", "-q", "--out", str(tmp_path), "--name", "r", *sets(*TINY)])
    assert again.exit_code == 2 and "exists" in again.stderr and "Traceback" not in again.output


def test_stop_and_resume_from_the_command_line(tmp_path):
    args = ["train", "-q", "--out", str(tmp_path), "--name", "r", *sets(*TINY)]
    stopped = runner.invoke(app, [*args, "--stop-at", "2"])
    assert stopped.exit_code == 3 and "stopped at step 2 of 4; resume with: icam train --resume" in stopped.stderr
    assert "validation split is empty" not in stopped.output  # it was stopped, not empty
    resumed = runner.invoke(app, ["train", "-q", "--resume", str(tmp_path / "r")])
    assert resumed.exit_code == 0, resumed.output
    assert "training finished: 4 steps" in resumed.stdout


def test_errors_are_one_line_with_a_hint(tmp_path):
    missing = runner.invoke(app, ["train", "--resume", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "not an icam run folder" in missing.stderr
    both = runner.invoke(app, ["train", "--resume", str(tmp_path), "--config", "x.yaml"])
    assert both.exit_code == 2 and "drop --config" in both.stderr
    bad_init = runner.invoke(app, ["train", "-q", "--out", str(tmp_path), "--init-from", str(tmp_path / "no.pt"),
                                   *sets(*TINY)])
    assert bad_init.exit_code == 2 and "no such checkpoint" in bad_init.stderr
    for result in (missing, both, bad_init):
        assert "Traceback" not in result.output


def test_synth_size_as_written_in_the_readme(tmp_path):
    result = runner.invoke(app, ["synth", "--out", str(tmp_path / "s"), "--dims", "3", "--n", "6", "--size",
                                 "32x48x32"])
    assert result.exit_code == 0, result.output
    assert "shape 32x48x32" in result.output
    bad = runner.invoke(app, ["synth", "--out", str(tmp_path / "b"), "--dims", "3", "--size", "32 48"])
    assert bad.exit_code == 2 and "expected sides joined by x" in bad.output
