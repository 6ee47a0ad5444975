"""`sweep/expand.py`: axes to runs, --exclude rules, and what is refused before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg_bench.errors import UsageError
from medseg_bench.losses import LOSSES, REGION_LOSSES
from medseg_bench.spec import RunSpec
from medseg_bench.sweep.expand import SweepRequest, expand, parse_exclude

TASK = "Task04_Hippocampus"


def _request(**kw: object) -> SweepRequest:
    return SweepRequest(tasks=[TASK], **kw)  # type: ignore[arg-type]


def test_exclude_removes_exactly_the_matching_combinations(home: Path) -> None:
    full, _ = expand(_request(archs=["unet", "deeplab"], augs=["none", "heavy"], dims=["2d"]))
    kept, notes = expand(_request(archs=["unet", "deeplabv3plus"], augs=["none", "heavy"], dims=["2d"],
                                  exclude=["arch=deeplabv3plus,aug=heavy"]))  # aliases are resolved
    assert len(full) == 4 and len(kept) == 3
    assert not any(s.arch == "deeplab" and s.aug == "heavy" for s in kept)
    assert "1 combination(s) removed by --exclude" in notes


def test_a_value_given_twice_is_one_value_and_excluded_once(home: Path) -> None:
    # `--seed 0,0,1 --exclude seed=0` said 4 combinations were removed (one run was); an arch and its alias
    # were two archs to the count.
    kept, notes = expand(_request(archs=["deeplab", "deeplabv3plus"], dims=["2d"], seeds=[0, 0, 1],
                                  exclude=["seed=0"]))
    assert [(r.arch, r.seed) for r in kept] == [("deeplab", 1)]
    assert notes == ["1 combination(s) removed by --exclude"]
    _, notes = expand(SweepRequest(tasks=[TASK, TASK], archs=["deeplab", "deeplabv3plus", "unet"],
                                   dims=["2d"], exclude=["arch=deeplab"]))
    assert notes == ["1 combination(s) removed by --exclude"]
    # a line of combinations that cannot exist, every one excluded: counted once each, as before
    _, notes = expand(_request(archs=["fcn", "unet"], dims=["2d"], encoders=["resnet34", "resnet34"],
                               seeds=[0, 1, 1], exclude=["arch=fcn"]))
    assert notes == ["2 combination(s) removed by --exclude"]


@pytest.mark.parametrize(("rule", "message"), [
    ("arch", "'arch' is not key=value"),
    ("colour=red", "unknown key 'colour'"),
    # a misspelt name is said with its rule, as a bad encoder or dims is (it looked like the --arch flag's)
    ("arch=unte", r"^exclude rule 'arch=unte': unknown arch 'unte'; did you mean 'unet'"),
    ("aug=lite", r"^exclude rule 'aug=lite': unknown aug 'lite'"),
    ("loss=dice_c", r"^exclude rule 'loss=dice_c': unknown loss 'dice_c'"),
    ("task=Task99", r"^exclude rule 'task=Task99': unknown task 'Task99'"),
    ("dims=4d", "unknown dims '4d'"),
    (",", "is empty"),
    ("arch=unet,arch=deeplab",  # deeplab alone was dropped
     r"exclude rule 'arch=unet,arch=deeplab': arch is given twice; a rule drops the runs that match all its"),
    ("encoder=resnet81", r"exclude rule 'encoder=resnet81': unknown smp encoder 'resnet81'.*did you mean"),
])
def test_bad_exclude_rules(home: Path, rule: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_exclude(rule)


def test_excluding_everything_is_an_error(home: Path) -> None:
    with pytest.raises(UsageError, match="no runs"):
        expand(_request(dims=["3d"], exclude=["dims=3d"]))


def test_no_runs_says_why(home: Path) -> None:
    with pytest.raises(UsageError, match=r"no runs \(deeplab in 3d: skipped, 'deeplab' has no 3d variant"):
        expand(_request(archs=["deeplab"], dims=["3d"]))


def test_tta_only_for_augmentations_that_mirror(home: Path) -> None:
    # nnU-Net mirrors at inference only along axes it mirrored in training; a net trained without mirroring
    # is no better, often far worse, on mirrored images.
    runs, notes = expand(_request(dims=["3d"], augs=["none", "light"], tta=True))
    assert {r.aug: r.tta for r in runs} == {"none": False, "light": True}
    assert any(n.startswith("--tta with aug none: evaluated without it") for n in notes)
    plain, _ = expand(_request(dims=["3d"], augs=["none"]))
    assert [r.run_id for r in runs if r.aug == "none"] == [r.run_id for r in plain]  # the same run


def test_an_encoder_for_a_3d_only_sweep_is_said_to_be_unused(home: Path) -> None:
    _, notes = expand(_request(dims=["3d"], encoders=["resnet50"]))
    assert "--encoder resnet50: unused, no run of the sweep is 2D (3D nets take no encoder)" in notes
    assert not expand(_request(dims=["2d"], encoders=["resnet50"]))[1]
    # 2D asked for, but its only arch has no 2D variant: the line said "the sweep has no 2D run"
    _, notes = expand(_request(dims=["2d", "3d"], archs=["unetr"], encoders=["resnet50"]))
    assert notes[-1] == "--encoder resnet50: unused, no run of the sweep is 2D (3D nets take no encoder)"


def test_an_encoder_is_said_to_be_unused_where_exclude_removed_every_2d_run(home: Path) -> None:
    # --encoder was decided before --exclude, --pretrained after it: a sweep whose rules removed every 2D run
    # said --pretrained was unused, and nothing of --encoder
    unused = "--encoder resnet50: unused, no run of the sweep is 2D (3D nets take no encoder)"
    runs, notes = expand(_request(archs=["unet", "deeplab"], encoders=["resnet50"], pretrained=True,
                                  exclude=["dims=2d"]))
    assert {r.dims for r in runs} == {"3d"}
    assert unused in notes
    assert "--pretrained: unused, no run of the sweep is 2D (3D nets have no pretrained encoder)" in notes
    runs, notes = expand(_request(archs=["unet", "deeplab"], encoders=["resnet50"], exclude=["arch=deeplab"]))
    assert {r.dims for r in runs} == {"2d", "3d"} and unused not in notes  # unet's 2D runs take it
    # a 2D arch that cannot take the encoder says so itself: its line, not "unused" as well
    _, notes = expand(_request(archs=["fcn", "dynunet"], encoders=["resnet34"]))
    assert "fcn with --encoder resnet34: skipped, 'fcn' takes resnet50 or resnet101" in notes
    assert not any(note.startswith("--encoder") for note in notes)


def test_an_encoder_one_2d_arch_refuses_and_exclude_takes_from_the_others_is_said_to_be_unused(
        home: Path) -> None:
    # fcn refused resnet34 and --exclude removed unet's 2D runs, which took it: fcn's line alone was said (the
    # refusal silenced "unused"), so the user read that unet's 2D runs trained on resnet34
    fcn = "fcn with --encoder resnet34: skipped, 'fcn' takes resnet50 or resnet101"
    runs, notes = expand(_request(archs=["unet", "fcn"], encoders=["resnet34"],
                                  exclude=["arch=unet,dims=2d"]))
    assert {r.dims for r in runs} == {"3d"}
    assert notes == [fcn, "1 combination(s) removed by --exclude",
                     "--encoder resnet34: unused, no run of the sweep is 2D (3D nets take no encoder)"]
    # each value once: fcn excluded, its line for resnet34 is moot, and neither encoder has a run
    runs, notes = expand(_request(archs=["fcn", "dynunet"], encoders=["resnet34", "resnet50"],
                                  exclude=["arch=fcn"]))
    assert notes == ["2 combination(s) removed by --exclude",
                     "--encoder resnet34,resnet50: unused, no run of the sweep is 2D (3D nets take no "
                     "encoder)"]
    # 2D runs left, but none on resnet34: said, not left to the count of combinations removed
    runs, notes = expand(_request(archs=["unet", "fcn"], dims=["2d"], encoders=["resnet34", "resnet50"],
                                  exclude=["arch=unet"]))
    assert {r.encoder for r in runs} == {"resnet50"}
    assert notes[-1] == "--encoder resnet34: unused, --exclude removed every run that takes it"


def test_a_rule_that_excludes_combinations_skipped_already_matches_them(home: Path) -> None:
    # fcn refuses resnet34: its line was said, then "exclude rule 'arch=fcn' matches no combination of this
    # sweep", as if the rule did nothing. The user excluded fcn: its skip is moot, the rule removed it.
    runs, notes = expand(_request(archs=["unet", "fcn"], encoders=["resnet34"], exclude=["arch=fcn"]))
    assert {r.arch for r in runs} == {"unet"}
    assert notes == ["1 combination(s) removed by --exclude"]
    # some of fcn's combinations excluded, not all: its line stands, and the rule is not said to match none
    _, notes = expand(_request(archs=["unet", "fcn"], encoders=["resnet34"], seeds=[0, 1],
                               exclude=["arch=fcn,seed=1"]))
    assert notes == ["fcn with --encoder resnet34: skipped, 'fcn' takes resnet50 or resnet101"]
    # an arch without the dims asked for, and regions on a task without them: the same
    _, notes = expand(_request(archs=["deeplab", "unet"], dims=["2d", "3d"],
                               exclude=["arch=deeplab,dims=3d"]))
    assert notes == ["1 combination(s) removed by --exclude"]
    _, notes = expand(_request(dims=["3d"], targets=["labels", "regions"], exclude=["target=regions"]))
    assert notes == ["1 combination(s) removed by --exclude"]


def test_pretrained_for_a_3d_only_sweep_is_said_to_be_unused(home: Path) -> None:
    # it was ignored without a word: the same run ids as without it
    runs, notes = expand(_request(dims=["3d"], pretrained=True))
    assert notes == ["--pretrained: unused, no run of the sweep is 2D (3D nets have no pretrained encoder)"]
    assert [r.run_id for r in runs] == [r.run_id for r in expand(_request(dims=["3d"]))[0]]
    runs, notes = expand(_request(dims=["2d", "3d"], pretrained=True))
    assert not notes and {r.dims: r.pretrained for r in runs} == {"2d": True, "3d": False}


def test_fcn_takes_its_own_encoders_from_a_sweep_that_names_others(home: Path) -> None:
    # fcn has torchvision's ResNet-50/101 backbones: without --encoder it runs its own default, and an encoder
    # axis it cannot take (resnet34, for the smp archs) skips those combinations with a line, not the sweep
    alone, _ = expand(_request(archs=["fcn"]))
    assert [(r.arch, r.encoder) for r in alone] == [("fcn", "resnet50")]
    runs, notes = expand(_request(archs=["fcn", "unet"], dims=["2d"], encoders=["resnet34", "resnet50"]))
    assert sorted((r.arch, r.encoder) for r in runs) == [("fcn", "resnet50"), ("unet", "resnet34"),
                                                         ("unet", "resnet50")]
    assert "fcn with --encoder resnet34: skipped, 'fcn' takes resnet50 or resnet101" in notes
    # none it can take: skipped too (as deeplab in 3D), once for all tasks; alone, the sweep has no runs
    tasks = [TASK, "Task01_BrainTumour"]
    runs, notes = expand(SweepRequest(tasks=tasks, archs=["unet", "fcn"], dims=["2d"], encoders=["resnet34"]))
    assert {(r.arch, r.encoder) for r in runs} == {("unet", "resnet34")}
    assert notes == ["fcn with --encoder resnet34: skipped, 'fcn' takes resnet50 or resnet101"]
    with pytest.raises(UsageError, match="no runs .fcn with --encoder resnet34: skipped") as info:
        expand(_request(archs=["fcn"], encoders=["resnet34"]))
    # the encoder was not taken because fcn cannot take it: it went on "no run of the sweep is 2D (3D nets
    # take no encoder)", of a sweep whose only arch is 2D
    assert "no run of the sweep is 2D" not in str(info.value)
    runs, notes = expand(_request(archs=["fcn", "unet"], dims=["2d", "3d"], encoders=["resnet34"]))
    assert {(r.dims, r.arch) for r in runs} == {("2d", "unet"), ("3d", "unet")}
    _, notes = expand(_request(archs=["fcn", "unetr"], encoders=["resnet34"]))
    assert notes == ["fcn with --encoder resnet34: skipped, 'fcn' takes resnet50 or resnet101"]
    with pytest.raises(UsageError, match="no encoder given"):
        expand(_request(encoders=[]))


def test_an_encoder_smp_refuses_for_an_arch_is_skipped_for_it(home: Path) -> None:
    # smp's UnetPlusPlus and Linknet refuse a mit_b* encoder in their constructor: the sweep listed the runs,
    # prepared the task, then each failed (exit 5)
    request = _request(archs=["unet", "unetplusplus"], dims=["2d"], encoders=["mit_b0", "resnet18"])
    runs, notes = expand(request)
    assert sorted((r.arch, r.encoder) for r in runs) == [("unet", "mit_b0"), ("unet", "resnet18"),
                                                         ("unetplusplus", "resnet18")]
    assert notes == ["unetplusplus with --encoder mit_b0: skipped, smp refuses it (UnetPlusPlus is not "
                     "support encoder_name=mit_b0)"]
    with pytest.raises(UsageError, match=r"no runs \(linknet with --encoder mit_b0: skipped, smp refuses it"):
        expand(_request(archs=["linknet"], encoders=["mit_b0"]))


def test_an_arch_and_encoder_pair_is_built_once_for_a_sweep_of_several_tasks(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # each pair was built (on the meta device) again for every task of the sweep: 10 tasks x 11 archs x 3
    # encoders took 6 s more to expand
    import medseg_bench.models as models

    getattr(models.encoder_problem, "cache_clear", lambda: None)()
    built: list[str | None] = []
    original = models.ModelInputs

    def inputs(*args: object, **kw: object) -> models.ModelInputs:
        made = original(*args, **kw)  # type: ignore[arg-type]
        built.append(made.encoder)
        return made

    monkeypatch.setattr(models, "ModelInputs", inputs)
    tasks = [TASK, "Task01_BrainTumour", "Task02_Heart"]
    runs, _ = expand(SweepRequest(tasks=tasks, archs=["unetplusplus"], dims=["2d"], encoders=["resnet18"]))
    assert len(runs) == 3 and built == ["resnet18"]


def test_a_patch_size_must_fit_every_dims_of_the_sweep(home: Path) -> None:
    # unet runs in 2D and 3D: a 3-sided patch would reach the 2D runs, which fail only once they train.
    with pytest.raises(UsageError, match="--patch-size 32,32,32 has 3 sides, but the sweep has 2d runs"):
        expand(_request(patch_size=(32, 32, 32)))
    runs, _ = expand(_request(patch_size=(32, 32, 32), dims=["3d"]))
    assert [r.patch_size for r in runs] == [(32, 32, 32)]


def test_a_batch_batchnorm_cannot_train_on_is_refused_before_anything_runs(home: Path) -> None:
    # deeplab batch-normalises its pooled image features: a batch of 1 fails at any patch
    with pytest.raises(UsageError, match="arch 'deeplab' .2d. batch-normalises globally pooled features"):
        expand(_request(archs=["unet", "deeplab"], dims=["2d"], batch_size=1))
    # smp's U-Net only at a patch whose 1/32 map is one pixel
    with pytest.raises(UsageError, match="arch 'unet' .2d. at patch 32x32 .* side of at least 64"):
        expand(_request(archs=["unet"], dims=["2d"], batch_size=1, patch_size=(32, 32)))
    runs, _ = expand(_request(archs=["unet"], dims=["2d"], batch_size=1, patch_size=(64, 32)))
    assert [r.batch_size for r in runs] == [1]
    runs, _ = expand(_request(archs=["unet", "segresnet", "pspnet"], batch_size=1))
    assert len(runs) == 4


def test_an_arch_that_cannot_take_a_tasks_channels_is_skipped_for_it(home: Path) -> None:
    from tests.conftest import write_task_file

    write_task_file(home, "TaskRGB", channels=3)
    runs, notes = expand(SweepRequest(tasks=[TASK, "TaskRGB"], archs=["unet", "vnet"], dims=["3d"]))
    assert sorted((r.task, r.arch) for r in runs) == [(TASK, "unet"), (TASK, "vnet"), ("TaskRGB", "unet")]
    assert notes == ["vnet on TaskRGB: skipped, arch 'vnet' (3d) takes 1, 2, 4, 8 or 16 input channels (its "
                     "first layer repeats them to 16), but TaskRGB has 3"]


def test_encoders_are_checked_before_anything_runs(home: Path) -> None:
    with pytest.raises(UsageError, match="unknown smp encoder 'resnet999'; did you mean 'resnet50'"):
        expand(_request(dims=["2d"], encoders=["resnet34", "resnet999"]))
    with pytest.raises(UsageError, match="encoder 'tu-convnxt_tiny'; did you mean 'tu-convnext_tiny'"):
        expand(_request(dims=["2d"], encoders=["tu-convnxt_tiny"]))
    runs, _ = expand(_request(dims=["2d"], encoders=["efficientnet-b0", "tu-convnext_tiny"]))
    assert [r.encoder for r in runs] == ["efficientnet-b0", "tu-convnext_tiny"]
    # a sweep of 3D runs alone takes no encoder, but a typo is one there too (it was said to be unused, and
    # `--exclude encoder=resnet999` was refused where `--encoder resnet999` passed)
    with pytest.raises(UsageError, match="unknown smp encoder 'resnet999'; did you mean 'resnet50'"):
        expand(_request(dims=["3d"], encoders=["resnet999"]))
    runs, lines = expand(_request(dims=["3d"], encoders=["resnet18"]))
    assert len(runs) == 1 and lines == ["--encoder resnet18: unused, no run of the sweep is 2D (3D nets take "
                                        "no encoder)"]


def test_the_default_learning_rate_given_explicitly_is_the_same_run(home: Path) -> None:
    plain, _ = expand(_request(dims=["3d"]))
    explicit, _ = expand(_request(dims=["3d"], lr=3e-3))
    other, _ = expand(_request(dims=["3d"], lr=1e-3))
    assert explicit[0].run_id == plain[0].run_id != other[0].run_id


def test_class_weights_with_the_same_ratios_are_the_same_run(home: Path) -> None:
    # Only the ratios reach the loss, so 1,2,4 and 0.5,1,2 trained the same model twice under two run ids.
    def run(weights: tuple[float, ...]) -> RunSpec:
        return expand(_request(dims=["3d"], class_weights=weights))[0][0]

    assert run((1.0, 2.0, 4.0)).run_id == run((0.5, 1.0, 2.0)).run_id == run((0.3, 0.6, 1.2)).run_id
    assert run((0.5, 1.0, 2.0)).class_weights == (1.0, 2.0, 4.0)
    assert run((0.0, 1.0, 3.0)).class_weights == (0.0, 1.0, 3.0)
    assert run((1.0, 2.0, 4.0)).run_id != run((1.0, 2.0, 3.0)).run_id
    unweighted = expand(_request(dims=["3d"]))[0][0]  # equal weights: the unweighted loss (test_losses)
    assert run((1.0, 1.0, 1.0)) == run((2.5, 2.5, 2.5)) == unweighted


def test_exclude_rules_take_whole_numbers_for_fold_and_seed(home: Path) -> None:
    assert parse_exclude("seed=00,fold=1") == {"seed": "0", "fold": "1"}
    with pytest.raises(UsageError, match="fold takes a whole number, not 'zero'"):
        parse_exclude("fold=zero")
    runs, _ = expand(_request(dims=["3d"], seeds=[0, 1], exclude=["seed=00"]))
    assert [r.seed for r in runs] == [1]
    with pytest.raises(UsageError, match=r"exclude rule 'fold=7': fold 7 does not exist, the sweep has 5 "
                                         r"folds \(0 to 4\)"):
        expand(_request(dims=["3d"], exclude=["fold=7"]))


def test_a_rule_that_removes_nothing_says_so(home: Path) -> None:
    # e.g. a rule for the other dims, or for an encoder the sweep does not use: a line, not silence
    rules = ["encoder=resnet18", "aug=none,dims=3d"]
    runs, notes = expand(_request(archs=["unet"], dims=["2d"], exclude=rules))
    assert len(runs) == 1
    assert notes == [f"exclude rule '{rule}' matches no combination of this sweep: nothing removed by it"
                     for rule in rules]


def test_class_weights_of_the_wrong_length_name_the_task(home: Path) -> None:
    # a sweep of two tasks said "class weights need one value per class (4, ...)" without saying whose
    with pytest.raises(UsageError, match=r"^Task01_BrainTumour: class weights need one value per class \(4, "
                                         r"background first\), got 3"):
        expand(SweepRequest(tasks=["Task04_Hippocampus", "Task01_BrainTumour"], dims=["3d"],
                            class_weights=(1.0, 2.0, 3.0)))


BRATS = "Task01_BrainTumour"


def test_target_is_an_axis_of_the_sweep(home: Path) -> None:
    """labels and regions runs of the same configuration, told apart by their ids; labels is the default and
    keeps the id a run had before targets existed."""
    runs, notes = expand(SweepRequest(tasks=[BRATS], dims=["3d"], targets=["labels", "regions"]))
    assert [r.target for r in runs] == ["labels", "regions"] and not notes
    assert "-none-regions-f0-s0-" in runs[1].run_id and "regions" not in runs[0].run_id
    (default,), _ = expand(SweepRequest(tasks=[BRATS], dims=["3d"]))
    assert default == runs[0]
    kept, _ = expand(SweepRequest(tasks=[BRATS], dims=["3d"], targets=["labels", "regions"],
                                  exclude=["target=regions"]))
    assert kept == runs[:1]


def test_regions_on_a_task_that_cannot_have_them_are_refused_naming_the_task(home: Path) -> None:
    with pytest.raises(UsageError, match=r"^the sweep expands to no runs \(Task04_Hippocampus with "
                                         r"--target regions: skipped, it has no regions \(its task file "
                                         r"declares none\)\)$"):
        expand(_request(dims=["3d"], targets=["regions"]))
    with pytest.raises(UsageError, match=r"Task03_Liver with --target regions: skipped, its regions cannot "
                                         r"be painted into a label map in their order: region "
                                         r"'liver_and_cancer' adds labels 1, 2 beyond the regions after it"):
        expand(SweepRequest(tasks=["Task03_Liver"], dims=["3d"], targets=["regions"]))
    # beside runs that can: a line, and the others run
    runs, notes = expand(SweepRequest(tasks=[TASK, BRATS], dims=["3d"], targets=["labels", "regions"]))
    assert [(r.task, r.target) for r in runs] == [(TASK, "labels"), (BRATS, "labels"), (BRATS, "regions")]
    assert notes == ["Task04_Hippocampus with --target regions: skipped, it has no regions (its task file "
                     "declares none)"]


def test_every_loss_trains_region_runs(home: Path) -> None:
    """Every loss has a region form (`losses.REGION_LOSSES`): none is skipped with --target regions."""
    losses = list(LOSSES)
    runs, notes = expand(SweepRequest(tasks=[BRATS], dims=["3d"], losses=losses,
                                      targets=["labels", "regions"]))
    assert not notes
    assert sorted((r.loss, r.target) for r in runs) == [(loss, target) for loss in losses
                                                          for target in ("labels", "regions")]


def test_a_loss_without_a_region_form_and_class_weights_are_refused_for_regions(
        home: Path, softmax_only_loss: str) -> None:
    runs, notes = expand(SweepRequest(tasks=[BRATS], dims=["3d"], losses=["dice_ce", softmax_only_loss],
                                      targets=["labels", "regions"]))
    assert [(r.loss, r.target) for r in runs] == [("dice_ce", "labels"), ("dice_ce", "regions"),
                                                  (softmax_only_loss, "labels")]
    assert notes == [f"loss {softmax_only_loss} with --target regions: skipped, loss '{softmax_only_loss}' "
                     f"has no region form (sigmoid channels, one per region): target regions trains with "
                     f"{', '.join(REGION_LOSSES)}"]
    with pytest.raises(UsageError, match=rf"^the sweep expands to no runs \(loss {softmax_only_loss} with "
                                         rf"--target regions: skipped"):
        expand(SweepRequest(tasks=[BRATS], dims=["3d"], losses=[softmax_only_loss], targets=["regions"]))
    with pytest.raises(UsageError, match=r"no runs \(--class-weights with --target regions: skipped, class "
                                         r"weights weigh a softmax's classes"):
        expand(SweepRequest(tasks=[BRATS], dims=["3d"], targets=["regions"], class_weights=(1, 1, 2, 2)))
    equal, _ = expand(SweepRequest(tasks=[BRATS], dims=["3d"], targets=["regions"],
                                   class_weights=(2, 2, 2, 2)))
    assert equal[0].class_weights is None  # equal weights are no weights (`canonical_weights`)


@pytest.mark.parametrize(("request_", "message"), [
    ({"targets": ["classes"]}, "unknown target 'classes'; did you mean 'labels'?"),
    ({"targets": ["x"]}, "unknown target 'x'; choose from labels, regions"),
    ({"targets": []}, "no target given"),
    ({"exclude": ["target=region"]}, "exclude rule 'target=region': unknown target 'region'"),
])
def test_unknown_targets_are_refused(home: Path, request_: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        expand(SweepRequest(tasks=[BRATS], dims=["3d"], **request_))  # type: ignore[arg-type]
