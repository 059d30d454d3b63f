"""Usage errors: one line, exit 2, with a did-you-mean for a mistyped flag, preset, command or choice."""

from __future__ import annotations

import pytest
from rollgraph.graph.cli import main


def _usage_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err  # not ~70 lines of usage first
    return err


def test_a_mistyped_flag_gets_one_line_with_the_flag_it_meant(tiny, capsys):
    err = _usage_error(["run", str(tiny()), "--learnig_rate", "1e-3"], capsys)
    assert "unrecognized arguments: --learnig_rate" in err and "did you mean '--learning_rate'?" in err
    err = _usage_error(["validate", str(tiny()), "--scheduled_sampling_max_step_ofset=2"], capsys)
    assert "did you mean '--scheduled_sampling_max_step_offset'?" in err


def test_a_mistyped_command_or_choice_gets_a_suggestion(capsys):
    assert "did you mean 'validate'?" in _usage_error(["valdate", "quickstart"], capsys)
    assert "did you mean 'mermaid'?" in _usage_error(["graph", "quickstart", "--format", "mermiad"], capsys)


def test_a_mistyped_preset_name_exits_2_with_the_preset_it_meant(capsys):
    for command in ("run", "validate"):
        assert main([command, "quikstart"]) == 2
        err = capsys.readouterr().err
        assert "no such config file or preset (did you mean 'quickstart'?)" in " ".join(err.split())
