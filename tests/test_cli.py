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


def test_help_and_import_llmlab_do_not_import_torch():
    """`llmlab --help` (and every command's --help) builds the whole parser without torch or numpy, which took
    ~2.5 s of a 4 s `--help`; `import llmlab` is light too, and its public names load on first use."""
    import subprocess
    import sys

    code = ("import sys, llmlab, llmlab.cli\n"
            "llmlab.cli.build_parser()\n"
            "heavy = sorted(m for m in ('torch', 'numpy') if m in sys.modules)\n"
            "assert not heavy, heavy\n"
            "assert llmlab.artifacts.__name__ == 'llmlab.artifacts' and 'LLM' in dir(llmlab)\n"
            "assert not hasattr(llmlab, 'no_such_name')\n"
            "from llmlab import LLM, SamplingParams, Transformer\n"
            "from llmlab.engine import EngineConfig, LLMEngine\n"
            "assert LLM.__module__ == 'llmlab.engine.llm' and 'torch' in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("argv, suggestion", [
    (["genrate"], "; did you mean 'generate'?"),
    (["estimate", "inference-memory", "llama-7b"], "; did you mean 'infer-memory'?"),
    (["xyz"], None),
])
def test_a_mistyped_choice_gets_the_close_one(capsys, argv, suggestion):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "invalid choice" in err and len(err.strip().splitlines()) == 1
    assert (suggestion in err) if suggestion else "did you mean" not in err


def test_close_choice_reads_both_spellings_of_argparse_choices():
    from llmlab.cli import _close_choice

    for listed in ("'generate', 'data'", "generate, data"):  # quoted up to Python 3.12.7, bare after
        assert _close_choice(f"argument COMMAND: invalid choice: 'genrate' (choose from {listed})") == (
            "; did you mean 'generate'?")
    assert _close_choice("invalid choice: 'genrate', maybe you meant 'generate'? (choose from generate)") == ""
    assert _close_choice("expected one argument") == ""
