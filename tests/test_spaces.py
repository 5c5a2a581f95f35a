"""Named search spaces: every definition validates, the paper grid is complete, constraints hold by construction."""

from __future__ import annotations

import optuna
import pytest

from search_spaces import SPACES, families, get_space
from search_spaces.paper import PAPER_LRS
from search_spaces.spec import Family
from study.plan import make_plan
from trainables.config import TrialConfig


def test_every_space_validates_at_its_extremes():
    for name, space in SPACES.items():
        for draw in space.corner_draws(frozenset()):
            TrialConfig.from_dict(space.settings(draw), check_data=False)


def test_paper_grid_names_and_settings():
    # demo, cifar10_cpu, transfer_lars, the grid, Table 1 per dataset, ImageNet ResNet-50 per batch and the CLARS
    # paper's two
    assert len(SPACES) == 3 + 8 * 6 * 3 * 2 + 3 + 3 + 2
    assert get_space("tvlars_bs16k").fixed["batch_size"] == 16384
    assert get_space("lars_warmup_bs4k").variants["lars_warmup"].fixed["scheduler"] == "warmup_cosine"
    assert get_space("lars_nowarmup_bs4k").variants["lars_nowarmup"].fixed["scheduler"] == "poly"
    assert get_space("lambc_bs2k").variants["lambc"].fixed["optimizer"] == "lambc"
    assert get_space("tvlars_tinyimagenet_bs512").fixed["model"] == "resnet34"
    bt = get_space("bt_tvlars_bs16k")
    assert bt.fixed["task"] == "bt" and bt.scheduler_metric == ("train_loss", "min") and bt.metric == "val_top1"


@pytest.mark.parametrize("size", sorted(PAPER_LRS))
def test_lr_ranges_bracket_the_paper_sets(size):
    for family in ("tvlars", "lars_warmup", "lamb_nowarmup", "clars"):
        name = f"{family}_bs{size // 1024}k" if size >= 1024 else f"{family}_bs{size}"
        (lr,) = [p for p in get_space(name).variants[family].searched if p.key == "lr"]
        assert lr.low < min(PAPER_LRS[size]) and lr.high > max(PAPER_LRS[size])


def _draws(space, n, fixed=frozenset()):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(n):
        trial = study.ask()
        space.draw(trial, fixed)
        out.append(trial.params)
        study.tell(trial, 0.0)
    return out


@pytest.mark.parametrize("name", ["lambc_bs1k", "lambc_cifar100_bs512", "cifar10_cpu", "imagenet_resnet50_bs8k"])
def test_lambc_clips_as_its_paper_lower_bound_zero_upper_bracketing_1_to_10(name):
    space = get_space(name)
    lambc = [v for v in space.variants.values() if v.fixed["optimizer"] == "lambc"]
    assert all(v.fixed["clip_lower"] == 0.0 for v in lambc)
    uppers = [p for v in lambc for p in v.searched if p.key == "clip_upper"]
    assert uppers and all(p.low <= 1.0 and p.high >= 10.0 and p.log for p in uppers)
    assert not any(p.key == "clip_lower" for v in lambc for p in v.searched)


def test_a_two_sided_clip_stays_one_flag_away():
    plan = make_plan("lambc_bs1k", {"clip_lower": 0.5})
    assert plan.shared().optimizer_params["clip_lower"] == 0.5
    with pytest.raises(ValueError, match="clip_lower"):  # μ above the searched τ's low end: one clear error
        make_plan("lambc_bs1k", {"clip_lower": 2.0})


def test_tvlars_lambda_is_log_uniform_over_the_paper_range():
    lams = [d["tvlars/lam"] for d in _draws(get_space("tvlars_bs16k"), 300)]
    assert 1e-6 <= min(lams) and max(lams) <= 1e-2
    decades = {int(__import__("math").floor(__import__("math").log10(x))) for x in lams}
    assert decades == {-6, -5, -4, -3}  # every decade is visited: log-uniform, not uniform


def test_variants_take_turns_and_fixed_keys_are_not_sampled():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space, drawn = get_space("demo"), []
    for _ in range(9):
        trial = study.ask()
        drawn.append(space.draw(trial, frozenset({"lr"})))
        study.tell(trial, 0.0)
    assert [d["variant"] for d in drawn] == list(space.variants) * 3  # each variant its num_samples, in turn
    assert [t.user_attrs["variant"] for t in study.trials] == [d["variant"] for d in drawn]
    assert not any(k.endswith("/lr") for t in study.trials for k in t.params)
    assert space.total_samples == 3 * space.num_samples


def test_batch_size_is_a_variant_axis_with_its_own_lr_range():
    space = get_space("table1_cifar10")
    assert len(space.variants) == 5 * len(PAPER_LRS)
    for size in PAPER_LRS:
        variant = space.variants[f"tvlars_bs{size}"]
        (lr,) = [p for p in variant.searched if p.key == "lr"]
        assert variant.fixed["batch_size"] == size and lr.low < min(PAPER_LRS[size]) < max(PAPER_LRS[size]) < lr.high
    cpu = get_space("cifar10_cpu")
    assert {v.fixed["batch_size"] for v in cpu.variants.values()} == {128, 1024}
    assert {v.fixed["optimizer"] for v in cpu.variants.values()} == {"lars", "tvlars", "lamb", "lambc"}
    assert cpu.seeds >= 3 and cpu.confirm >= 1


def test_every_variant_is_one_family_with_its_spaces_additions():
    every = [f for f in vars(families).values() if isinstance(f, Family)]
    assert len({f.name for f in every}) == len(every) == 8
    for space in SPACES.values():
        for name, variant in space.variants.items():
            (family,) = [f for f in every if f.fixed["optimizer"] == variant.fixed["optimizer"]
                         and f.fixed["scheduler"] == variant.fixed["scheduler"]]
            assert family.fixed.items() <= variant.fixed.items(), (space.name, name)
            assert variant.searched[:len(family.searched)] == family.searched, (space.name, name)


def test_a_set_seed_fixes_the_trials_while_the_sampler_seed_varies():
    moved = make_plan("demo", {}, seed=5).shared()  # --seed 5 alone
    assert (moved.seed, moved.split_seed) == (5, 5)
    fixed = make_plan("demo", {"seed": 0, "split_seed": 0}, seed=5).shared()  # --seed 5 --set seed=0 --set split_seed=0
    assert (fixed.seed, fixed.split_seed) == (0, 0)
