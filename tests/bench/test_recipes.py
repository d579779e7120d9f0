"""``shortlist bench recipe``: each recipe's smoke profile through the real loop (a real agent process,
Select -> simulated annotator -> retrain -> publish -> hot swap -> evaluate) on tiny generated data."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from bench.recipes import RECIPES
from bench.recipes.spec import apply_imbalance, parse_imbalance
from shortlist.cli import app

CLASSES = ["circle", "square", "stripe"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ (20 per class) and test/ (6 per class) ImageFolder splits of 8x8 colour-coded images."""
    root = tmp_path_factory.mktemp("recipes") / "data"
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("test", 6)):
        for ci, c in enumerate(CLASSES):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                base = np.zeros((8, 8, 3))
                base[..., ci] = 200
                img = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / c / f"{i:04d}.png")
    return root


def _run(name: str, data: Path, out: Path, *extra: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["bench", "recipe", name, "--profile", "smoke", "--data", str(data),
                                      "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    run: dict[str, Any] = json.loads((out / "results.json").read_text())
    assert run["complete"] and run["recipe"] == name and run["budgets"] == [6, 12]
    for cell in run["cells"]:
        rounds = cell["rounds"]
        assert [r["labeled"] for r in rounds] == [6, 12] and rounds[0]["strategy"] == "random"
        assert rounds[1]["strategy"] == cell["strategy"]
        # the agent hot-swapped: round 1's Select was answered by the model round 0 published
        assert rounds[0]["published"] == "v0002" and rounds[1]["select_model_version"] == "v0002"
        assert rounds[1]["published"] == "v0003"
        assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in rounds)
    md = (out / "results.md").read_text()
    assert md.startswith(f"# `bench recipe {name}`") and "hot swap: " in md
    assert (out / "accuracy_vs_labels.png").stat().st_size > 1000
    return run


# The recipes whose own test below runs their smoke profile end to end (and checks what their arms do). Every
# other registered recipe (a new one, with no test of its own) is run by the registry-wide test instead: running
# all of them there too would double this file's time (about 13 s of CPU a recipe, measured; 3 min wall on the
# shared 2-core test machine for all five).
OWN_SMOKE_TEST = {"simsiam_al": "test_simsiam_al_linear_and_svm_heads",
                  "rotnet_entropy": "test_rotnet_entropy_continues_the_same_model",
                  "das": "test_das_scores_with_the_pretext_loss_and_resumes",
                  "mobyv2al": "test_mobyv2al_joint_training_on_an_imbalanced_pool"}


def test_each_recipe_named_as_run_by_its_own_test_has_that_test() -> None:
    assert set(OWN_SMOKE_TEST) <= set(RECIPES)
    assert all(callable(globals().get(test)) for test in OWN_SMOKE_TEST.values()), OWN_SMOKE_TEST


@pytest.mark.parametrize("name", [n for n in RECIPES if n not in OWN_SMOKE_TEST])
def test_every_registered_recipe_runs_its_smoke_profile(name: str, tiny: Path, tmp_path: Path) -> None:
    """Every registered recipe without a test of its own (OWN_SMOKE_TEST) runs end to end: pretext
    pretraining, round 0 (random) and round 1 (the arm's strategy) of its first arm, each published and
    hot-swapped, evaluated and reported. One arm and 2 training steps a round keep it to seconds. A recipe's
    imbalance names its data set's classes: here the tiny data's."""
    recipe = RECIPES[name]
    assert "smoke" in recipe.profiles, f"recipe {name}: give it a smoke profile (the tests run it)"
    extra = ["--arms", recipe.arms[0].name, "--steps", "2"]
    if recipe.imbalance:
        extra += ["--imbalance", f"{CLASSES[0]}=5"]
    _run(name, tiny, tmp_path / "out", *extra)


def test_simsiam_al_linear_and_svm_heads(tiny: Path, tmp_path: Path) -> None:
    run = _run("simsiam_al", tiny, tmp_path / "out", "--arms", "svm-entropy,scratch-random")
    acc = {c["arm"]: c["rounds"][-1]["test_accuracy"] for c in run["cells"]}
    # colour classes on frozen features: the SVM separates them (twice chance at least: the test split is 9
    # images and a 2-thread CPU pretraining is not bit-reproducible, so 7 of 9 and 9 of 9 both occur)
    assert acc["svm-entropy"] > 0.6
    assert "| svm-entropy | entropy | svm (pretext) |" in (tmp_path / "out" / "results.md").read_text()


def test_rotnet_entropy_continues_the_same_model(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = _run("rotnet_entropy", tiny, out, "--arms", "entropy")
    config = json.loads((out / "cells" / "entropy-seed0" / "round1" / "config.json").read_text())
    assert config["init"] == str(out / "cells" / "entropy-seed0" / "round0") and config["keep_head"]
    assert run["encoder"]["kind"] == "pretrained here"
    assert json.loads((out / "pretrain" / "config.json").read_text())["method"] == "rotnet"


def test_das_scores_with_the_pretext_loss_and_resumes(tiny: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.recipes import loop

    out = tmp_path / "out"
    real = loop.run_round

    def interrupted(*args: Any, **kwargs: Any) -> dict[str, Any]:
        if args[3] == 1:  # round 1 of the first cell: as if the run were killed there
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "run_round", interrupted)
    with pytest.raises(KeyboardInterrupt):
        loop.run_recipe(RECIPES["das"], RECIPES["das"].profiles["smoke"], tiny, out, loop.Options(arms=["das"]))
    rounds = json.loads((out / "cells" / "das-seed0" / "rounds.json").read_text())
    assert len(rounds) == 1 and not (out / "cells" / "das-seed0" / "cell.json").exists()
    monkeypatch.setattr(loop, "run_round", real)
    run = _run("das", tiny, out, "--arms", "das")  # resumes round 1 with the labels the agent kept
    (cell,) = run["cells"]
    assert cell["rounds"][0] == rounds[0] and cell["rounds"][1]["strategy"] == "das"
    config = json.loads((out / "cells" / "das-seed0" / "round1" / "config.json").read_text())
    assert config["rotation_weight"] == 1.0  # the rotation head the das score uses stays trained
    # a rerun of a finished run trains nothing
    again = _run("das", tiny, out, "--arms", "das")
    assert again["cells"] == run["cells"]


def test_mobyv2al_joint_training_on_an_imbalanced_pool(tiny: Path, tmp_path: Path) -> None:
    run = _run("mobyv2al", tiny, tmp_path / "out", "--arms", "joint-coreset", "--imbalance", "circle=5", "--steps",
               "3", "--test", "9")
    assert run["pool_size"] == 45 and run["pool_class_counts"] == [5, 20, 20] and run["test_size"] == 9
    assert [r["train_steps"] for r in run["cells"][0]["rounds"]] == [3, 3]
    assert run["overrides"] == {"test_size": 9, "steps": 3}  # the report says what differs from the profile
    assert "**overridden here**: test_size 9, steps 3" in (tmp_path / "out" / "results.md").read_text()
    config = json.loads((tmp_path / "out" / "cells" / "joint-coreset-seed0" / "round1" / "config.json").read_text())
    assert config["mode"] == "moby_al" and config["init"] is None and config["unlabeled_pick"] == "low_contrastive"
    assert config["unlabeled_ratio"] == 1.0 and config["contrast_labeled"] and config["lambda_c"] == 0.5
    assert "imbalanced by circle=5" in (tmp_path / "out" / "results.md").read_text()
    # the registered imbalanced variant: the paper's five CIFAR-10 classes at 10% of their images
    assert dict(RECIPES["mobyv2al_imbalanced"].imbalance) == {
        c: "10%" for c in ("airplane", "automobile", "bird", "cat", "deer")}


def test_bad_arguments_are_usage_errors_that_write_nothing(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    for args, message in ((["nope"], "valid: simsiam_al, rotnet_entropy, das, mobyv2al"),
                          (["das", "--profile", "huge"], "valid: smoke, cpu, gpu"),
                          (["das", "--arms", "das,nope"], "has no arm 'nope'"),
                          (["das", "--imbalance", "circle"], "CLASS=COUNT"),
                          (["das", "--imbalance", "nope=3"], "unknown class 'nope'")):
        result = CliRunner().invoke(app, ["bench", "recipe", *args, "--profile", "smoke", "--data", str(tiny),
                                          "--out", str(out)] if "--profile" not in args else
                                    ["bench", "recipe", *args, "--data", str(tiny), "--out", str(out)])
        assert result.exit_code == 2, result.output
        flat = re.sub(r"[\s│╭╮╰╯─]+", " ", result.output)  # rich's box, wrapped at any width
        assert message in flat and "Traceback" not in result.output
    assert not out.exists()


def test_a_pool_smaller_than_the_pretraining_batch_is_a_usage_error(tiny: Path, tmp_path: Path) -> None:
    """The gpu profile's SimSiam batch (512) on a 60-image pool: a message naming --pool, not a traceback
    from deep in the training loop."""
    result = CliRunner().invoke(app, ["bench", "recipe", "simsiam_al", "--profile", "gpu", "--data", str(tiny),
                                      "--pretrain-minutes", "0.01", "--budgets", "6,12",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    flat = re.sub(r"[\s│╭╮╰╯─]+", " ", result.output)
    assert "smaller than one pretraining batch" in flat and "--pool 512 or more" in flat
    assert "--data of 512 images" in flat
    assert "Traceback" not in result.output


def test_a_round_whose_labels_are_of_one_class_stops_with_a_message(tiny: Path, tmp_path: Path) -> None:
    """A first budget of 1 label: the round's cycle refuses to train a one-class model; the command says
    which cell and round and what to change, exit 1, no traceback."""
    result = CliRunner().invoke(app, ["bench", "recipe", "das", "--profile", "smoke", "--data", str(tiny),
                                      "--arms", "das", "--budgets", "1,6", "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    flat = re.sub(r"\s+", " ", result.output)
    assert "stopped: das seed 0 round 0 (1 labels)" in flat and "--budgets" in flat, flat
    assert "Traceback" not in result.output


def test_every_registered_recipe_validates() -> None:
    """Each recipe's pretext, arms' strategies and params and heads' modes are what the training and the agent
    take (checked at registration, without training); spec's torch-free name lists match the registries."""
    from agent.strategies import STRATEGIES
    from bench.recipes.spec import HEAD_MODES, PRETEXTS, recipe_problems
    from training.finetune import FINETUNE_MODES
    from training.methods import METHODS

    assert set(PRETEXTS) == set(METHODS) and set(HEAD_MODES) <= set(FINETUNE_MODES)
    for recipe in RECIPES.values():
        assert recipe_problems(recipe) == [], recipe.name
        assert recipe.pretext in METHODS
        for arm in recipe.arms:
            assert arm.strategy in STRATEGIES and arm.head.mode in FINETUNE_MODES, (recipe.name, arm.name)
            STRATEGIES[arm.strategy].check(arm.params)


def test_two_recipes_of_one_name_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The later one used to replace the first silently (a dict keyed by name)."""
    import dataclasses

    import bench.recipes as registry

    das = RECIPES["das"]
    twin = dataclasses.replace(RECIPES["rotnet_entropy"], name="das")
    monkeypatch.setattr(registry, "_cache", {})
    monkeypatch.setattr(registry, "_registered", lambda: (das, twin))
    with pytest.raises(registry.RecipeRegistryError, match="two registered recipes are named 'das'"):
        registry.recipes()


def _recipe_names_in(text: str) -> list[str]:
    return re.findall(r"`(\w+)`", text)


def test_the_docs_recipe_lists_are_the_registry() -> None:
    """README's command table and docs/benchmarks.md list the recipes by hand: the names must be the registry's,
    in its order."""
    root = Path(__file__).resolve().parents[2]
    readme = next(line for line in (root / "README.md").read_text().splitlines()
                  if line.startswith("| `bench recipe NAME"))
    listed = readme.split("through the agent:", 1)[1].split("(", 1)[0]
    assert _recipe_names_in(listed) == list(RECIPES), f"README.md's bench recipe row should list: {list(RECIPES)}"
    bench = next(line for line in (root / "docs" / "benchmarks.md").read_text().splitlines()
                 if line.startswith("shortlist bench recipe nope"))
    listed = bench.split("at this writing", 1)[1].split(";", 1)[0]
    assert [n.strip() for n in listed.split(",")] == list(RECIPES), \
        f"docs/benchmarks.md's `bench recipe nope` line should list: {', '.join(RECIPES)}"


def test_a_recipe_with_a_bad_strategy_pretext_or_param_is_refused_at_registration() -> None:
    """A misspelt strategy used to surface after the pretraining and round 0, as a gRPC traceback; now the
    recipe cannot be made, and the message lists the valid names."""
    from bench.recipes.spec import Arm, Head, Recipe

    def make(pretext: str, *arms: Arm) -> Recipe:
        return Recipe(name="typo", title="", paper="", claims=(), pretext=pretext, arms=arms,
                      profiles=dict(RECIPES["das"].profiles))

    good = Arm("entropy", "entropy", Head("full"))
    with pytest.raises(ValueError, match=r"recipe typo: arm bad: unknown strategy 'entropi'; valid: .*\bentropy\b"):
        make("rotnet", good, Arm("bad", "entropi", Head("full")))
    with pytest.raises(ValueError, match="unknown pretext 'rotnett'; valid: simsiam, rotnet, moby"):
        make("rotnett", good)
    with pytest.raises(ValueError, match=r'arm bad: strategy "das" does not take param\(s\) lamda; valid: lambda'):
        make("rotnet", good, Arm("bad", "das", Head("full"), params={"lamda": "1"}))
    with pytest.raises(ValueError, match="unknown head mode 'ful'"):
        make("rotnet", Arm("bad", "entropy", Head("ful")))
    assert make("rotnet", good).arms == (good,)


def test_an_agent_error_in_a_round_stops_with_one_line(tiny: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent refusing a round's call (here a strategy it does not have, slipped past the registration
    check): one line naming the cell, round and the agent's message, exit 1, no traceback."""
    import copy

    recipe = copy.copy(RECIPES["das"])
    arm = copy.copy(recipe.arms[1])
    object.__setattr__(arm, "strategy", "entropi")
    object.__setattr__(recipe, "arms", (arm,))
    monkeypatch.setitem(RECIPES, "das", recipe)
    result = CliRunner().invoke(app, ["bench", "recipe", "das", "--profile", "smoke", "--data", str(tiny),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    flat = re.sub(r"\s+", " ", result.output)
    assert ('stopped: entropy seed 0 round 1: the agent answered INVALID_ARGUMENT: unknown strategy "entropi"'
            in flat), flat
    assert "Traceback" not in result.output and "_InactiveRpcError" not in result.output


def test_imbalance_cuts_only_the_named_classes() -> None:
    labels = np.repeat(np.arange(3), 10)
    pool = np.arange(30)
    assert parse_imbalance("0=3, square=50%") == {"0": "3", "square": "50%"}
    kept = apply_imbalance(labels, pool, {"0": "3", "square": "50%"}, CLASSES)
    assert np.bincount(labels[kept]).tolist() == [3, 5, 10] and np.all(np.diff(kept) > 0)
    with pytest.raises(typer.BadParameter, match="CLASS=COUNT"):
        parse_imbalance("circle=-1")


def test_the_report_says_when_the_code_changed_during_the_run() -> None:
    """results.json's git_commit is the commit at the run's start; git_commit_end, present only when the
    checkout moved during the run, makes results.md say so (a committed run's results as the input)."""
    from bench.recipes.report import markdown

    committed = Path(__file__).resolve().parents[2] / "docs" / "results" / "recipe-rotnet_entropy-cpu"
    results = json.loads((committed / "results.json").read_text())
    start = results["git_commit"]
    assert "git_commit_end" not in results
    line = next(x for x in markdown(results).splitlines() if f"commit {start[:10]}" in x)
    assert "code changed" not in line
    results["git_commit_end"] = "f" * 40
    line = next(x for x in markdown(results).splitlines() if f"commit {start[:10]}" in x)
    assert f"commit {start[:10]} (checkout at ffffffffff by the end: the code changed during the run)" in line


def test_a_broken_recipe_registration_breaks_bench_recipe_alone(tmp_path: Path) -> None:
    """An arm naming a strategy the agent lacks (here: the agent's 'coreset' removed before the CLI starts)
    used to end every command (status --help, serve) in a ValueError traceback, as the CLI imported the
    recipes at start. Now the other commands run, and ``bench recipe`` says which recipe and why in one line."""
    import subprocess
    import sys

    def shortlist(*args: str) -> subprocess.CompletedProcess[str]:
        code = ("import sys; from agent.strategies import STRATEGIES; del STRATEGIES['coreset']; "
                f"sys.argv = ['shortlist', *{list(args)!r}]; from shortlist.cli import main; main()")
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              cwd=Path(__file__).resolve().parents[2])

    for args in (("status", "--help"), ("--help",), ("bench", "strategies", "--help")):
        done = shortlist(*args)
        assert done.returncode == 0 and "Traceback" not in done.stderr, (args, done.stderr)
    done = shortlist("bench", "recipe", "--help")
    assert done.returncode == 0 and "unknown strategy 'coreset'" in re.sub(r"[\s│]+", " ", done.stdout), done.stdout
    done = shortlist("bench", "recipe", "simsiam_al", "--profile", "smoke", "--data", str(tmp_path))
    flat = re.sub(r"\s+", " ", done.stderr)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "a registered recipe is refused: recipe simsiam_al: arm linear-coreset: unknown strategy 'coreset'" in flat


def test_a_signal_during_training_says_to_rerun_bench_recipe(tiny: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal inside the pretraining or a round's training (loop.Interrupted, whose hint names `shortlist
    pretrain --resume` or `shortlist cycle`): one line naming `bench recipe`, exit 130, no traceback."""
    import bench.recipes.loop as recipe_loop
    from training import loop

    def stopped(*a: object, **k: object) -> None:
        raise loop.Interrupted("SIGINT", 3, tmp_path / "out" / "pretrain", "nothing was published; run "
                               "`shortlist cycle` again")

    monkeypatch.setattr(recipe_loop, "run_recipe", stopped)
    result = CliRunner().invoke(app, ["bench", "recipe", "das", "--profile", "smoke", "--data", str(tiny),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 130, result.output
    said = " ".join(result.output.split())
    assert said == (f"interrupted: SIGINT: training stopped at step 3, checkpointed in "
                    f"{tmp_path / 'out' / 'pretrain'}; run the same `shortlist bench recipe`"
                    " command again to resume (what finished is reused)"), said


def test_bad_budgets_are_refused_before_the_data_is_loaded(tiny: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """--budgets 0 was refused only after the data was loaded and the pretext encoder pretrained."""
    import bench.recipes.loop as recipe_loop

    def not_yet(*a: object, **k: object) -> None:
        raise AssertionError("the recipe ran before --budgets was checked")

    monkeypatch.setattr(recipe_loop, "run_recipe", not_yet)
    result = CliRunner().invoke(app, ["bench", "recipe", "das", "--profile", "smoke", "--data", str(tiny),
                                      "--budgets", "4,0", "--out", str(tmp_path / "out")], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--budgets': budget '0' gives 0 labels; budgets must be positive" in result.output
    assert not (tmp_path / "out").exists()
