"""The top-level CLI: stray arguments are named with the command they were given to."""

import pytest

from llmlab.cli import main


@pytest.mark.parametrize("argv, prog, hint", [
    (["generate", "some-model", "hello"], "llmlab generate", "a value goes after its option's name"),
    (["generate", "--bogus", "3"], "llmlab generate", None),
    (["--bogus"], "llmlab", None),
])
def test_stray_arguments_name_the_command_and_its_help(capsys, argv, prog, hint):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"{prog}: error: unrecognized arguments")
    assert f"`{prog} --help` lists the options" in err and len(err.strip().splitlines()) == 1
    assert (hint in err) if hint else "option's name" not in err
