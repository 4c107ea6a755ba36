"""Each flag is declared once, as a config field: prefkit.cli.builder makes the commands' options from the
dataclasses, and the resume check's keys (GENERATE_IDENTITY_KEYS) come from the fields' metadata."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from prefkit.cli.builder import Invocation, config_command
from prefkit.config import field, keys_of

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Toy:
    name: str = field(None, "The [bold]name[/] of it.", argument=True)
    count: int = field(3, "How many.", panel="Numbers")
    scale: float | None = field(None, "A scale.", panel="Numbers")
    tags: list[str] = field(help="A tag; repeat.", default_factory=list)
    out: str = field(None, "A folder.", path=True)
    loud: bool = field(False, "Shout.", flags=("--loud", "-l"))
    check: bool = field(True, "Check it.", flags=("--check/--no-check",))
    mode: str = field("fast", "The mode.", identity=False)


def _app(**kw):
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    seen = []

    @config_command(app, Toy, **kw)
    def toy(args: Invocation) -> None:
        """A toy command."""
        seen.append((args.resolve(), args.extra))

    @app.command()
    def other() -> None:  # a second command, so that typer keeps the command names
        pass

    return app, seen


def _run(app, args):
    res = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


def test_options_types_defaults_and_flags():
    app, seen = _app()
    _run(app, ["toy", "n"])
    assert seen[-1][0] == Toy(name="n")
    args = ["toy", "n", "--count", 5, "--scale", 0.5, "--tags", "a", "--tags", "b", "--out", "x/y", "-l"]
    _run(app, [*args, "--no-check", "--mode", "slow"])
    cfg = seen[-1][0]
    assert cfg == Toy("n", 5, 0.5, ["a", "b"], "x/y", True, False, "slow")
    assert isinstance(cfg.out, str) and isinstance(cfg.tags, list)


def test_argument_is_required_when_its_default_is_none():
    app, _ = _app()
    res = CliRunner().invoke(app, ["toy"])
    assert res.exit_code == 2


def test_config_file_between_defaults_and_flags(tmp_path):
    app, seen = _app()
    conf = tmp_path / "c.yaml"
    conf.write_text("count: 7\nmode: slow\ntags: [t]\n")
    _run(app, ["toy", "n", "--config", conf, "--mode", "given"])
    assert seen[-1][0] == Toy(name="n", count=7, tags=["t"], mode="given")


def test_help_escapes_markup_and_uses_panels():
    app, _ = _app()
    res = CliRunner().invoke(app, ["toy", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
    assert res.exit_code == 0
    assert "The [bold]name[/] of it." in res.output
    assert "Numbers" in res.output and "--check" in res.output and "--no-check" in res.output
    assert "-l" in res.output and "--config" in res.output


def test_extra_parameters_and_overrides():
    import inspect
    from typing import Annotated

    extra = inspect.Parameter(
        "second",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[str | None, typer.Argument()],
    )
    app, seen = _app(extra=[extra], overrides={"mode": {"flags": ("--mode", "-m")}}, config_file=False)
    _run(app, ["toy", "n", "two", "-m", "slow"])
    assert seen[-1] == (Toy(name="n", mode="slow"), {"second": "two"})
    assert CliRunner().invoke(app, ["toy", "n", "--config", "c.yaml"]).exit_code == 2


def test_a_field_without_a_default_is_a_required_option():
    @dataclasses.dataclass
    class Needs:
        size: int = dataclasses.field(metadata={"help": "The size."})

    app = typer.Typer(add_completion=False)
    seen = []

    @config_command(app, Needs)
    def needs(args: Invocation) -> None:
        seen.append(args.resolve())

    @app.command()
    def other() -> None:
        pass

    assert CliRunner().invoke(app, ["needs"]).exit_code == 2
    _run(app, ["needs", "--size", 3])
    assert seen == [Needs(size=3)]


def test_unsupported_field_types_are_refused():
    @dataclasses.dataclass
    class Bad:
        where: dict = field(help="no", default_factory=dict)

    with pytest.raises(TypeError, match="cannot be an option"):
        config_command(typer.Typer(), Bad)


def test_keys_of_counts_a_field_in_unless_it_says_otherwise():
    assert keys_of(Toy, "identity") == ("name", "count", "scale", "tags", "out", "loud", "check")
    assert keys_of(Toy, "argument", default=False) == ("name",)


def test_generate_identity_keys_from_the_fields():
    from prefkit.config import GENERATE_IDENTITY_KEYS

    assert set(GENERATE_IDENTITY_KEYS) == {
        "model", "revision", "lora", "prompt", "prompts", "samples_per_prompt", "steps", "guidance",
        "negative_prompt", "eta", "noise_level", "seed", "same_noise", "height", "width", "groups_per_shard",
        "batch_size", "dtype", "store_embeddings",
    }  # fmt: skip
    # the manifest's "settings" are exactly these keys: a new GenerateConfig field is checked on --resume,
    # and the schema must then say what it is
    schema = json.loads((ROOT / "schemas" / "manifest.schema.json").read_text())
    assert set(schema["properties"]["settings"]["properties"]) == set(GENERATE_IDENTITY_KEYS)


def _commands():
    from prefkit.cli.main import app

    return typer.main.get_command(app).commands


def test_every_command_option_is_a_config_field_with_its_default():
    """The CLI declares no option of its own: every parameter is a field (defaults from the dataclass)."""
    checked = set()
    for name, command in _commands().items():
        cls = getattr(command.callback, "config_class", None)
        if cls is None:
            assert name in ("version", "env")
            continue
        fields = {f.name: f for f in dataclasses.fields(cls)}
        params = {
            p.name: p
            for p in command.params
            if p.name not in ("config", "help", "stats_dataset", "judge", "against")
            and not p.name.startswith("_alias_")
        }
        assert set(params) == set(fields), name
        for key, p in params.items():
            f = fields[key]
            if f.default is not dataclasses.MISSING and f.default is not None and not p.required:
                assert p.default == f.default, f"{name} --{key}: {p.default!r} != {f.default!r}"
        checked.add(name)
    assert checked == {"generate", "label", "train", "eval", "loop", "bench", "annotate", "publish"}


def test_loop_defaults_are_loop_config_and_generate_config_defaults():
    from prefkit.config import GenerateConfig, LoopConfig

    loop = {p.name: p.default for p in _commands()["loop"].params}
    assert loop["rounds"] == LoopConfig.rounds and loop["lr"] == LoopConfig.lr
    assert (loop["model"], loop["steps"], loop["guidance"], loop["generate_batch_size"]) == (
        GenerateConfig.model,
        GenerateConfig.steps,
        GenerateConfig.guidance,
        GenerateConfig.batch_size,
    )


def test_flags_short_options_and_arguments_as_before():
    cmds = _commands()

    def opts(name):
        return {p.name: tuple(p.opts) + tuple(p.secondary_opts) for p in cmds[name].params}

    for name in ("generate", "label", "train", "eval", "loop", "annotate", "publish"):
        assert opts(name)["quiet"] == ("--quiet", "-q"), name
        assert opts(name)["config"] == ("--config",), name
    assert opts("eval")["kl"] == ("--kl", "--no-kl")
    assert opts("bench")["json_out"] == ("--json",)
    assert opts("generate")["samples_per_prompt"] == ("--samples-per-prompt",)
    assert opts("generate")["same_noise"] == ("--same-noise",)  # an on-only flag
    positional = {
        name: [p.name for p in c.params if isinstance(p, typer.core.TyperArgument)]
        for name, c in cmds.items()
    }
    assert positional["label"] == ["dataset", "stats_dataset"]
    assert positional["train"] == positional["annotate"] == positional["publish"] == ["dataset"]
    assert positional["bench"] == ["what"] and positional["generate"] == positional["eval"] == []


def test_old_spellings_are_hidden_aliases_with_a_note(tmp_path):
    """eval --samples is now --samples-per-prompt, label --model is --judge-model: the old spellings work
    (command line and --config), hidden from --help, with a note; both at once is an error."""
    from typer.testing import CliRunner

    from prefkit.cli.main import app
    from prefkit.config import EvalConfig, load_config_file

    runner = CliRunner()
    help_text = runner.invoke(app, ["eval", "--help"]).output
    assert "--samples-per-prompt" in help_text and "--samples " not in help_text
    res = runner.invoke(app, ["eval", "--lora", str(tmp_path / "none"), "--samples", "0"])
    assert res.exit_code == 2
    assert "--samples is read as --samples-per-prompt" in res.stderr
    res = runner.invoke(app, ["eval", "--samples", "1", "--samples-per-prompt", "2"])
    assert res.exit_code == 2 and "old spelling" in res.output + res.stderr
    # diffusers' script names for train's settings
    res = runner.invoke(
        app, ["train", str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--learning_rate", "1e-3"]
    )
    assert res.exit_code == 2 and "--learning_rate is read as --lr" in res.stderr
    (tmp_path / "c.yaml").write_text("samples: 3\n")
    assert load_config_file(tmp_path / "c.yaml", EvalConfig) == {"samples_per_prompt": 3}


def test_yaml_numbers_written_without_a_dot_are_numbers(tmp_path):
    """PyYAML reads 1e-3 as a string; a number-typed setting takes it as the number."""
    from prefkit.config import load_config_file
    from prefkit.training.config import TrainConfig

    (tmp_path / "c.yaml").write_text("lr: 1e-3\nmax-steps: '20'\n")
    assert load_config_file(tmp_path / "c.yaml", TrainConfig) == {"lr": 1e-3, "max_steps": 20}
    (tmp_path / "bad.yaml").write_text("lr: fast\n")
    with pytest.raises(Exception, match="lr: expected a number, got 'fast'"):
        load_config_file(tmp_path / "bad.yaml", TrainConfig)


def test_env_prints_what_a_bug_report_needs():
    import json

    import torch
    from typer.testing import CliRunner

    from prefkit.cli.main import app

    res = CliRunner().invoke(app, ["env", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["torch"] == torch.__version__ and info["cuda_available"] == torch.cuda.is_available()
    assert set(info["trackers"]) == {"tensorboard", "wandb"} and info["libraries"]["peft"]
    text = CliRunner().invoke(app, ["env"]).output
    assert "torch" in text and "trackers" in text and text.count("\ntorch ") == 1  # not printed twice
